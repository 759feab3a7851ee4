"""RadVault jobs layer."""

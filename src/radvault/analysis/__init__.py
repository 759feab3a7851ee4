"""RadVault analysis layer."""

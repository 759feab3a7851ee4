"""RadVault imaging layer."""

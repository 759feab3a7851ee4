"""RadVault vault layer."""

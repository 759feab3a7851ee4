"""RadVault pipeline layer."""

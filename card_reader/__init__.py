"""The card side: APDUs, the reader port, the PC/SC driver, DESFire, the KSH card application,
keys, and the software card (emulator)."""

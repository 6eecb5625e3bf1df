"""The one contract every side imports: accelerator configuration, ISA, numerics."""

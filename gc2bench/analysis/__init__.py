"""Analyses of how compressors behave (``gc2bench analyze ...``): positional_bias (AAAI GlobalCom² Fig. 4)."""

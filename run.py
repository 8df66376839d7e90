"""gc2bench entry point: `python run.py compressor=globalcom2 ratio=0.1` (Hydra overrides; `-m` sweeps).

The same as `gc2bench run ...`; the configs are conf/ (shipped in the package as gc2bench/conf)."""

from gc2bench.entry import main

if __name__ == "__main__":
    main()

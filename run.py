"""Start silicon-pool: `python run.py --help` lists the flags."""

from silicon_pool.cli import main

if __name__ == "__main__":
    main()

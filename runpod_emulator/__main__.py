import sys

from runpod_emulator.cli import main

sys.exit(main())

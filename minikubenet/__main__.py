import sys

from minikubenet.cli import main

sys.exit(main())

import sys

from tests.answers import main

sys.exit(main())

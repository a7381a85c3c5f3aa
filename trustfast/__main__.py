import sys

from trustfast.cli import main

sys.exit(main())

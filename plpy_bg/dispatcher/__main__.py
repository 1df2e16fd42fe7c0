import sys

from plpy_bg.dispatcher.server import main

sys.exit(main())

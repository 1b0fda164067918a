"""python -m services.analytics [serve|migrate]"""

from services.analytics.service import DEFINITION
from services.kernel.server import main

main(DEFINITION)

"""python -m services.devices [serve|migrate]"""

from services.devices.service import DEFINITION
from services.kernel.server import main

main(DEFINITION)

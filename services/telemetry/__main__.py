"""python -m services.telemetry [serve|migrate]"""

from services.kernel.server import main
from services.telemetry.service import DEFINITION

main(DEFINITION)

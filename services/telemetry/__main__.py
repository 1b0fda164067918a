"""python -m services.telemetry [serve|migrate]"""

from services.telemetry.memory import tune_malloc

tune_malloc()

from services.kernel.server import main  # noqa: E402 - after the malloc settings
from services.telemetry.service import DEFINITION  # noqa: E402

main(DEFINITION)

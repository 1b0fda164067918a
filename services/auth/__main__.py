"""python -m services.auth [serve|migrate]"""

from services.auth.service import DEFINITION
from services.kernel.server import main

main(DEFINITION)

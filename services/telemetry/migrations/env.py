from services.kernel.migrations import run_env
from services.telemetry.models import Base

run_env(Base.metadata)

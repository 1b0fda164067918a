"""The auth service's configuration: the kernel's plus its own, read once at startup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from services.kernel.config import Env, KernelConfig, kernel_fields


@dataclass(frozen=True)
class AuthConfig(KernelConfig):
    key_encryption_secret: str
    access_token_ttl_seconds: int
    refresh_token_ttl_seconds: int
    password_reset_ttl_seconds: int
    invitation_ttl_seconds: int
    email_verification_ttl_seconds: int
    signing_key_rotation_seconds: int
    login_window_seconds: int
    login_max_failures_per_account: int
    login_max_failures_per_address: int

    @classmethod
    def from_env(cls, service_name: str = "auth", env: Env | None = None) -> Self:
        env = env or Env()
        return cls(
            **kernel_fields(service_name, env),
            key_encryption_secret=env.secret("AUTH_KEY_ENCRYPTION_SECRET"),
            access_token_ttl_seconds=env.integer("AUTH_ACCESS_TOKEN_TTL_SECONDS", 15 * 60),
            refresh_token_ttl_seconds=env.integer("AUTH_REFRESH_TOKEN_TTL_SECONDS", 30 * 86400),
            password_reset_ttl_seconds=env.integer("AUTH_PASSWORD_RESET_TTL_SECONDS", 3600),
            invitation_ttl_seconds=env.integer("AUTH_INVITATION_TTL_SECONDS", 7 * 86400),
            email_verification_ttl_seconds=env.integer(
                "AUTH_EMAIL_VERIFICATION_TTL_SECONDS", 7 * 86400
            ),
            signing_key_rotation_seconds=env.integer(
                "AUTH_SIGNING_KEY_ROTATION_SECONDS", 30 * 86400
            ),
            login_window_seconds=env.integer("AUTH_LOGIN_WINDOW_SECONDS", 15 * 60),
            login_max_failures_per_account=env.integer("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", 5),
            login_max_failures_per_address=env.integer("AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", 20),
        )

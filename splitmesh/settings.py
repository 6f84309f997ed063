"""Settings shared by the CLI and the apps. Defaults < environment variables < command-line flags.

Every settings class derives from `Settings` and names its environment prefix; `from_env` is the one
place that reads the environment (pydantic-settings' EnvSettingsSource: names are case-insensitive,
empty values count as unset). Constructing a class directly reads no environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from splitmesh.errors import ConfigError

_NUMBER_ERRORS = {"float_parsing", "int_parsing", "int_from_float", "float_type", "int_type"}


class Settings(BaseSettings):
    """Base of every settings class: frozen, unknown names refused, environment read by `from_env` only."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Self:
        """Defaults, then <prefix><FIELD> environment variables, then the flags that were given (not None)."""
        source = EnvSettingsSource(cls)
        if environ is not None:  # an explicit environment (tests, a child's env) instead of os.environ
            source.env_vars = parse_env_vars(environ, source.case_sensitive, source.env_ignore_empty)
        values = {**source(), **{k: v for k, v in flags.items() if v is not None}}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_explain(cls, exc)) from exc

    def override(self, **flags: Any) -> Self:
        """Apply command-line flags that were given (None means not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return self.model_validate({**self.model_dump(), **given})
        except ValidationError as exc:
            raise ConfigError(_explain(type(self), exc)) from exc


def _explain(cls: type[Settings], exc: ValidationError) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors():
        name = prefix + str(error["loc"][0]).upper() if error["loc"] else cls.__name__
        what = "is not a number" if error["type"] in _NUMBER_ERRORS else f"is refused: {error['msg']}"
        problems.append(f"{name}={error.get('input')!r} {what}")
    return "; ".join(problems) + " (fix the environment variable or the command-line flag)"


class ChainSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="SPLITMESH_")

    rpc_url: str | None = None  # EVM JSON-RPC endpoint; None = start a local hardhat node
    private_key: str | None = None  # 0x-hex key that signs transactions; None = local dev key
    market: str | None = None  # JobMarket address; None = the remembered deployment for rpc_url
    tx_timeout: float = 120.0  # seconds to wait for a transaction receipt

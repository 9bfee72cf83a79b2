"""``notify:`` in config.yaml (the channels) and in job.yaml (which of them a job uses).

Credentials are referenced by environment variable name (``secret_env``,
``password_env``, ``url_env``: a Slack or Discord webhook URL *is* a credential), never
written in the file, so they never reach the state DB, a payload or a log.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..durations import parse_duration
from .events import EVENT_TYPES

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: ntfy's priority names, 1 (min) to 5 (max).
NTFY_PRIORITIES = {"min": 1, "low": 2, "default": 3, "high": 4, "urgent": 5, "max": 5}


def _env_name(value: str | None) -> str | None:
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(f"'{value}' is not an environment variable name: give the NAME of the variable that "
                         "holds the value, never the value itself")
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]


def _events(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value or [])
    for item in items:
        if item == "all" or item in EVENT_TYPES or (item.endswith(".*") and any(
                t.startswith(item[:-1]) for t in EVENT_TYPES)):
            continue
        raise ValueError(f"unknown event '{item}'; expected all, a group such as job.* or one of "
                         f"{', '.join(EVENT_TYPES)}")
    return tuple(items) or ("all",)


def _url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError(f"'{value}' is not an http(s) URL")
    return value


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Which events this channel gets: "all", groups ("job.*") or types ("job.failed").
    events: Annotated[tuple[str, ...], BeforeValidator(_events)] = ("all",)
    #: Whether every job's events go here; false: only jobs whose job.yaml names the channel.
    default: bool = True
    #: Seconds one send may take before it counts as failed.
    timeout: float = Field(default=10.0, gt=0, le=120)

    def wants(self, event_type: str) -> bool:
        return any(e == "all" or e == event_type or (e.endswith(".*") and event_type.startswith(e[:-1]))
                   for e in self.events)

    def secret_envs(self) -> list[str]:
        """The environment variables this channel reads credentials from."""
        return [v for k, v in self if k.endswith("_env") and v]


class WebhookChannel(_Channel):
    """A JSON POST of the event, signed with HMAC-SHA256 when ``secret_env`` is set."""

    type: Literal["webhook"]
    url: Annotated[str | None, BeforeValidator(_url)] = None
    #: The URL from the environment instead (when the URL itself carries a token).
    url_env: EnvName | None = None
    secret_env: EnvName | None = None


class NtfyChannel(_Channel):
    """An ntfy topic (https://ntfy.sh/<topic> or a self-hosted server)."""

    type: Literal["ntfy"]
    url: Annotated[str | None, BeforeValidator(_url)] = None
    url_env: EnvName | None = None
    #: An access token (``Authorization: Bearer``) for a protected topic.
    token_env: EnvName | None = None
    #: Priority per event type (ntfy's names or 1-5); the rest use the defaults.
    priorities: dict[str, Literal["min", "low", "default", "high", "urgent", "max", 1, 2, 3, 4, 5]] = \
        Field(default_factory=dict)


class _SecretUrlChannel(_Channel):
    """A webhook whose URL is its credential (anyone who has it can post): read from the
    environment variable ``url_env``, never written in config.yaml."""

    url_env: EnvName

    @model_validator(mode="before")
    @classmethod
    def _no_inline_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and "url" in data:
            raise ValueError(f"url: a {data.get('type')} webhook URL is a credential; export it in an environment "
                             "variable and give its name as url_env: (e.g. url_env: SLACK_WEBHOOK_URL)")
        return data


class SlackChannel(_SecretUrlChannel):
    """A Slack incoming webhook."""

    type: Literal["slack"]


class DiscordChannel(_SecretUrlChannel):
    """A Discord webhook."""

    type: Literal["discord"]


class EmailChannel(_Channel):
    """Mail over SMTP: STARTTLS on port 587 by default (``tls: ssl`` for port 465)."""

    type: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    #: A CA bundle to trust (a self-hosted server's own certificate); unset: the system's.
    ca_file: str | None = None
    username: str | None = None
    password_env: EnvName | None = None
    sender: str = Field(alias="from")
    to: tuple[str, ...]

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not items or any(not isinstance(a, str) or "@" not in a for a in items):
            raise ValueError("give one address or a list of addresses")
        return items


class CommandChannel(_Channel):
    """A local program that gets the event JSON on stdin (exit 0 = delivered)."""

    type: Literal["command"]
    #: argv (a list) or one command line (split like a shell would, never run by one).
    command: tuple[str, ...]

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        import shlex

        items = shlex.split(value) if isinstance(value, str) else value
        if not items:
            raise ValueError("give the program to run, e.g. command: [/usr/local/bin/on-orch-event]")
        return items


Channel = Annotated[Union[WebhookChannel, NtfyChannel, SlackChannel, DiscordChannel, EmailChannel, CommandChannel],
                    Field(discriminator="type")]


def _hours(value: Any) -> float:
    return parse_duration(value) / 3600


class NotifySettings(BaseModel):
    """``notify:`` of config.yaml: the channels and the thresholds of watched events."""

    model_config = ConfigDict(extra="forbid")

    channels: dict[str, Channel] = Field(default_factory=dict)
    #: quota.low when a platform's window has less than this share left.
    quota_low_percent: float = Field(default=20.0, ge=0, le=100)
    #: job.waiting when a job has been queued this long (a duration, e.g. "6h").
    waiting: Annotated[float, BeforeValidator(_hours)] = 6.0
    #: login.expiring this long before a credential dies (a duration, e.g. "2d").
    login_expiring: Annotated[float, BeforeValidator(_hours)] = 48.0
    #: Give an event up (logged as failed) when it could not be sent for this long.
    give_up_after: Annotated[float, BeforeValidator(_hours)] = 24.0

    @field_validator("channels")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _CHANNEL_NAME.match(str(name)):
                raise ValueError(f"'{name}' is not a usable channel name; use letters, digits, '_' and '-'")
        return value


class JobNotify(BaseModel):
    """``notify:`` of job.yaml: channels to add for this job (even those with ``default:
    false``) and channels to silence (``silence: all`` or ``notify: false`` for none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    add: tuple[str, ...] = ()
    silence: tuple[str, ...] = ()

    @field_validator("add", "silence", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else (value or ())


def job_notify(value: Any) -> Any:
    """``notify: false`` silences every channel; ``notify: [a, b]`` adds channels."""
    if value is False:
        return {"silence": ["all"]}
    if isinstance(value, (str, list, tuple)):
        return {"add": value}
    return value

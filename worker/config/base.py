"""What the configuration's sections share: the model every section is, the keys that would
hold a secret, weekday and role names, and the checks of an email address."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, ValidationInfo

from .. import defaults

ENV_CONFIG = defaults.ENV_CONFIG
#: Keys that would hold a secret, and how each is given instead (never in the file).
SECRET_KEYS = {
    "password": "set password_env to the name of an environment variable, or password_file to a file "
                "holding it (e.g. a container secret)",
    "oauth_client_secret": "set oauth_client_secret_env to the name of an environment variable, or "
                           "oauth_client_secret_file to a file holding it (e.g. a container secret)",
    "token_secret": "set token_secret_env to the name of an environment variable",
}
#: How a password is given, for the checks that find none (validate_data relies on the
#: "password_env" in it to say nothing twice).
PASSWORD_SOURCE = ("password_env (an environment variable name) or password_file (e.g. a container secret); "
                   "passwords never go in the file")
#: Environment overrides: CAREWATCH__STORE__URL=... sets [store] url (double underscore = nesting).
ENV_PREFIX = defaults.ENV_PREFIX

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: The names a weekday may be given by in `hours`: its three letters or its full English name.
WEEKDAY_NAMES = {**{d: d for d in WEEKDAYS},
                 **{full: full[:3] for full in ("monday", "tuesday", "wednesday", "thursday", "friday",
                                                "saturday", "sunday")}}
KNOWN_ROLES = ("principal", "sponsor", "user", "finance", "legal", "other")
_EMAIL_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
HOURS_RE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


#: Validation context for a second pass over a config that failed: required values that are
#: malformed (an email, a firm domain) are kept as written, so the checks across entries can
#: still run; their own problems were reported by the first pass.
LENIENT = {"lenient": True}


def lenient(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("lenient"))


def check_email(v: str, info: ValidationInfo) -> str:
    v = v.strip().lower()
    if not _EMAIL_RE.match(v) and not lenient(info):
        raise ValueError(f"{v!r} is not an email address")
    return v


class Section(BaseModel):
    """A section of the file: an unknown key is refused, not ignored (a misspelt key would
    otherwise leave its default in force without a word)."""

    model_config = ConfigDict(extra="forbid", frozen=False)

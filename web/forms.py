"""The forms.  Each is a FlaskForm, so each carries and checks a `csrf_token`."""

from __future__ import annotations

import re

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length, ValidationError

USERNAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024


def username_rules(form: FlaskForm, field: StringField) -> None:
    """1 to 64 printable characters with no space around them, so what is shown is what is stored."""
    value = field.data or ""
    if not value:
        raise ValidationError("Choose a username.")
    if len(value) > USERNAME_MAX:
        raise ValidationError(f"A username has at most {USERNAME_MAX} characters.")
    if not value.isprintable():
        raise ValidationError("A username may contain only printable characters.")
    if value != value.strip():
        raise ValidationError("A username may not start or end with a space.")


class SignupForm(FlaskForm):
    username = StringField("Username", validators=[username_rules])
    password = PasswordField("Password", validators=[
        Length(min=PASSWORD_MIN, max=PASSWORD_MAX,
               message=f"A password has {PASSWORD_MIN} to {PASSWORD_MAX} characters.")])


class LoginForm(FlaskForm):
    """Only presence is checked here: the shape rules belong to sign-up, and a login just fails."""

    username = StringField("Username", validators=[InputRequired("Enter your username.")])
    password = PasswordField("Password", validators=[InputRequired("Enter your password.")])


class LogoutForm(FlaskForm):
    """No fields: it exists so that logging out needs a valid csrf_token."""


SESSION_ID_RE = re.compile(r"[0-9a-f]{16}")  # a session's public id (what mesh.sessions lists)


def revoke_target(form: FlaskForm, field: StringField) -> None:
    """Exactly one of a session id and ``all_others=1``."""
    session_id, all_others = form.session_id.data or "", form.all_others.data or ""
    if all_others not in ("", "1"):
        raise ValidationError("all_others is 1 or absent.")
    if bool(session_id) == bool(all_others):
        raise ValidationError("Choose one session, or all the others.")
    if session_id and not SESSION_ID_RE.fullmatch(session_id):
        raise ValidationError("That is not a session id.")


class RevokeSessionForm(FlaskForm):
    """End one session by its public id, or every other one (``all_others=1``); the csrf_token is checked."""

    session_id = StringField("Session", validators=[revoke_target])
    all_others = StringField("All others")


# ---- the budget demo ------------------------------------------------------------

LABEL_MAX = 80                      # what web.budget stores (budget.LABEL_MAX)
AMOUNT_RE = re.compile(r"([+-]?)(\d{1,10})(?:[.,](\d{1,2}))?")  # 10 digits: under the daemon's 10**12 cents


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def label_rules(form: FlaskForm, field: StringField) -> None:
    value = field.data or ""
    if not value:
        raise ValidationError("Say what the entry is for.")
    if len(value) > LABEL_MAX:
        raise ValidationError(f"A label has at most {LABEL_MAX} characters.")
    if not value.isprintable():
        raise ValidationError("A label may contain only printable characters.")


def parse_cents(text: str) -> int | None:
    """'12.50' -> 1250, '-3' -> -300, '+0,5' -> 50; None for anything else (no thousands separators)."""
    found = AMOUNT_RE.fullmatch(text.replace("\u2212", "-"))  # a typographic minus is still a minus
    if found is None:
        return None
    sign, units, fraction = found.groups()
    cents = int(units) * 100 + int((fraction or "0").ljust(2, "0"))
    return -cents if sign == "-" else cents


def amount_rules(form: FlaskForm, field: StringField) -> None:
    value = field.data or ""
    if not value:
        raise ValidationError("Enter an amount, like 12.50 or -3.")
    cents = parse_cents(value)
    if cents is None:
        raise ValidationError("Use digits with at most two decimals, like 12.50 or -3.")
    if cents == 0:
        raise ValidationError("An entry of zero changes nothing: enter another amount.")


class BudgetEntryForm(FlaskForm):
    """One budget line: what it is for, and an amount in currency units (negative for spending)."""

    label = StringField("What for", filters=[_strip], validators=[label_rules])
    amount = StringField("Amount", filters=[_strip], validators=[amount_rules])

    @property
    def cents(self) -> int:
        cents = parse_cents(self.amount.data or "")
        assert cents is not None, "read cents only after validate()"
        return cents

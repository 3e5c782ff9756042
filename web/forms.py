"""The three forms.  Each is a FlaskForm, so each carries and checks a `csrf_token`."""

from __future__ import annotations

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

"""Password rules and password hashing.

:class:`PasswordPolicy` decides whether a new password is acceptable and, when
it is not, says every reason at once so a user can fix them in one go. The
rules follow NIST SP 800-63B in spirit: length first, no obvious or common
passwords, no password built from the username; character classes are asked
for only when the password is not a passphrase of several words.

Hashing is argon2id through ``argon2-cffi``'s :class:`argon2.PasswordHasher`,
whose parameters are chosen by the caller (:func:`make_hasher`); tests pass
tiny parameters so that they stay fast, and stored hashes made with other
parameters are upgraded on the next successful login.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from argon2 import PasswordHasher, Type

from radvault.errors import AccountError, ConfigurationError, PasswordPolicyError

__all__ = [
    "COMMON_PASSWORDS",
    "AccountError",
    "PasswordPolicy",
    "PasswordPolicyError",
    "check_hasher",
    "make_hasher",
    "normalise_password",
]


# A small list of the passwords attackers try first (after normalisation:
# lower case, common digit/symbol substitutions undone, non-letters dropped).
COMMON_PASSWORDS: frozenset[str] = frozenset(
    {
        "password", "passw", "passwd", "pass", "qwerty", "qwertyuiop", "asdfgh", "asdfghjkl",
        "zxcvbnm", "azerty", "letmein", "welcome", "iloveyou", "admin", "administrator",
        "root", "login", "master", "monkey", "dragon", "football", "baseball", "soccer",
        "sunshine", "princess", "shadow", "superman", "batman", "trustno", "whatever",
        "freedom", "secret", "changeme", "default", "test", "guest", "hello", "abc",
        "abcdef", "abcdefgh", "qazwsx", "michael", "jennifer", "charlie", "hospital",
        "doctor", "nurse", "radiology", "radiologist", "medical", "clinic", "patient",
        "radvault", "summer", "winter", "spring", "autumn", "january", "december",
        "starwars", "pokemon", "computer", "internet", "loveme", "mustang", "access",
    }
)

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "@": "a", "$": "s", "!": "i"})
_WORD_SPLIT = re.compile(r"[\s\-_.,;:+/]+")
_DECORATION = re.compile(r"^[\W\d_]+|[\W\d_]+$")


def normalise_password(password: str) -> str:
    """Bring a password to Unicode NFKC, so the same characters typed on any client match.

    Parameters
    ----------
    password : str
        The password as typed.

    Returns
    -------
    str
        Its NFKC form (what gets hashed and checked).
    """
    return unicodedata.normalize("NFKC", password)


@dataclass(frozen=True)
class PasswordPolicy:
    """The rules a new password must meet.

    Parameters
    ----------
    min_length : int
        Fewest characters (default 12).
    max_length : int
        Most characters, so hashing cost stays bounded (default 1024).
    min_classes : int
        Character classes (lower, upper, digit, other) a non-passphrase needs.
    passphrase_words : int
        Distinct words that make a passphrase acceptable without mixed classes.
    common : frozenset of str
        Normalised passwords refused outright.

    Raises
    ------
    ConfigurationError
        If the limits contradict each other.
    """

    min_length: int = 12
    max_length: int = 1024
    min_classes: int = 3
    passphrase_words: int = 4
    common: frozenset[str] = field(default=COMMON_PASSWORDS, repr=False)

    def __post_init__(self) -> None:
        if not 8 <= self.min_length <= self.max_length:
            raise ConfigurationError("password lengths must satisfy 8 <= min_length <= max_length")
        if not 1 <= self.min_classes <= 4 or self.passphrase_words < 2:
            raise ConfigurationError("min_classes must be 1..4 and passphrase_words at least 2")

    def problems(self, password: str, username: str | None = None) -> list[str]:
        """Every rule ``password`` breaks (empty when it is acceptable).

        Parameters
        ----------
        password : str
            The candidate password.
        username : str, optional
            The account it is for; the password must not contain it.

        Returns
        -------
        list of str
            Human-readable problems, never echoing the password.
        """
        password = normalise_password(password)
        problems: list[str] = []
        if len(password) < self.min_length:
            problems.append(f"must be at least {self.min_length} characters long")
        if len(password) > self.max_length:
            problems.append(f"must be at most {self.max_length} characters long")
        lowered = password.casefold()
        if username and len(username) >= 3 and username.casefold() in lowered:
            problems.append("must not contain the username")
        if self._is_common(lowered):
            problems.append("is a commonly used password")
        words = {w for w in _WORD_SPLIT.split(lowered) if len(w) >= 2}
        is_passphrase = len(words) >= self.passphrase_words
        classes = sum(
            (
                any(c.islower() for c in password),
                any(c.isupper() for c in password),
                any(c.isdigit() for c in password),
                any(not c.isalnum() for c in password),
            )
        )
        if not is_passphrase and classes < self.min_classes:
            problems.append(
                f"must mix at least {self.min_classes} of lower case, upper case, digits and"
                f" symbols, or be a passphrase of at least {self.passphrase_words} words"
            )
        return problems

    def check(self, password: str, username: str | None = None) -> None:
        """Accept ``password`` or raise with every reason it is refused.

        Parameters
        ----------
        password : str
            The candidate password.
        username : str, optional
            The account it is for.

        Raises
        ------
        PasswordPolicyError
            If any rule is broken; ``problems`` lists them all.
        """
        problems = self.problems(password, username)
        if problems:
            raise PasswordPolicyError(problems)

    def _is_common(self, lowered: str) -> bool:
        # "P@ssw0rd2024!" -> core "p@ssw0rd" -> "password": undo the usual
        # decorations (trailing years and marks, digit-for-letter swaps).
        core = _DECORATION.sub("", lowered)
        forms = {
            lowered,
            "".join(c for c in lowered if not c.isspace()),
            "".join(c for c in lowered if c.isalpha()),
            core,
            core.translate(_LEET),
            "".join(c for c in core.translate(_LEET) if c.isalpha()),
        }
        return bool(forms & self.common)


def make_hasher(
    time_cost: int = 3,
    memory_cost_kib: int = 65536,
    parallelism: int = 4,
) -> PasswordHasher:
    """An argon2id hasher with the given parameters.

    The defaults are RFC 9106's second recommended option (64 MiB, 3 passes,
    4 lanes). Tests use ``make_hasher(1, 8, 1)``.

    Parameters
    ----------
    time_cost : int
        Passes over memory.
    memory_cost_kib : int
        Memory per hash in KiB (at least ``8 * parallelism``).
    parallelism : int
        Lanes.

    Returns
    -------
    argon2.PasswordHasher
        A hasher of type argon2id.

    Raises
    ------
    ConfigurationError
        If the parameters are out of range.
    """
    if time_cost < 1 or parallelism < 1 or memory_cost_kib < 8 * parallelism:
        raise ConfigurationError("argon2 needs time_cost >= 1 and memory_cost >= 8 * parallelism")
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_cost_kib,
        parallelism=parallelism,
        type=Type.ID,
    )


def check_hasher(hasher: PasswordHasher) -> PasswordHasher:
    """Return ``hasher`` if it makes argon2id hashes.

    Parameters
    ----------
    hasher : argon2.PasswordHasher
        The hasher to check.

    Returns
    -------
    argon2.PasswordHasher
        The same hasher.

    Raises
    ------
    ConfigurationError
        If it uses argon2i or argon2d.
    """
    if hasher.type is not Type.ID:
        raise ConfigurationError("password hashing must use argon2id")
    return hasher

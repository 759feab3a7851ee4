"""Password policy and argon2id hashing parameters."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher, Type

from radvault.access.passwords import (
    AccountError,
    PasswordPolicy,
    PasswordPolicyError,
    check_hasher,
    make_hasher,
    normalise_password,
)
from radvault.errors import ConfigurationError, RadVaultError

POLICY = PasswordPolicy()


@pytest.mark.parametrize(
    "password",
    [
        "Vivid-Lantern-42!",                # mixed classes, 17 characters
        "correct horse battery staple",     # passphrase of four words
        "amber-river-quiet-moon",           # passphrase with hyphens
        "Zq7#mW2!pL9@",                     # exactly 12, all four classes
    ],
)
def test_acceptable_passwords_pass(password):
    POLICY.check(password, username="alice")
    assert POLICY.problems(password, username="alice") == []


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("Sh0rt!pw", "at least 12 characters"),
        ("alllowercaseletters", "mix at least 3"),
        ("ALLUPPERCASE1234", "mix at least 3"),
        ("P@ssw0rd2024!", "commonly used"),         # leetspeak of a common password
        ("password1234", "commonly used"),
        ("Alice-Is-Great-99", "must not contain the username"),
        ("ALICEalice1234!", "must not contain the username"),
        ("x" * 1025, "at most 1024"),
        ("same same same same", "mix at least 3"),  # four words, but not distinct ones
    ],
)
def test_each_rule_refuses_with_a_clear_message(password, problem):
    with pytest.raises(PasswordPolicyError, match=problem) as info:
        POLICY.check(password, username="alice")
    assert any(problem in p for p in info.value.problems)


def test_every_failing_rule_is_listed_at_once():
    with pytest.raises(PasswordPolicyError) as info:
        POLICY.check("alice1", username="alice")
    problems = info.value.problems
    assert len(problems) == 3
    assert any("12 characters" in p for p in problems)
    assert any("username" in p for p in problems)
    assert any("mix" in p for p in problems)


def test_the_error_never_echoes_the_password():
    with pytest.raises(PasswordPolicyError) as info:
        POLICY.check("qwertyuiop", username="bob")
    assert "qwertyuiop" not in str(info.value)


def test_password_policy_error_sits_in_the_tree():
    err = PasswordPolicyError(["too short"])
    assert isinstance(err, AccountError)
    assert isinstance(err, RadVaultError)
    assert isinstance(err, ValueError)
    assert str(err) == "password refused: too short"


def test_short_usernames_do_not_poison_passwords():
    # A two-letter username appears in many strong passwords by chance.
    POLICY.check("Vivid-Lantern-42!", username="vi")


def test_policy_limits_are_validated():
    with pytest.raises(ConfigurationError):
        PasswordPolicy(min_length=4)
    with pytest.raises(ConfigurationError):
        PasswordPolicy(min_classes=5)
    assert PasswordPolicy(min_length=16).problems("Vivid-Lantern-4!") == []
    assert PasswordPolicy(min_length=17).problems("Vivid-Lantern-4!") != []


def test_passwords_are_compared_in_nfkc_form():
    assert normalise_password("\ufb01ne") == "fine"  # the "fi" ligature
    assert normalise_password("Ａ") == "A"          # full-width A


def test_make_hasher_gives_argon2id_with_the_given_parameters():
    hasher = make_hasher(time_cost=2, memory_cost_kib=16, parallelism=2)
    assert hasher.type is Type.ID
    encoded = hasher.hash("Vivid-Lantern-42!")
    assert encoded.startswith("$argon2id$")
    assert "m=16,t=2,p=2" in encoded
    assert hasher.verify(encoded, "Vivid-Lantern-42!")


def test_make_hasher_refuses_impossible_parameters():
    with pytest.raises(ConfigurationError):
        make_hasher(time_cost=0)
    with pytest.raises(ConfigurationError):
        make_hasher(memory_cost_kib=8, parallelism=4)


def test_only_argon2id_hashers_are_accepted():
    with pytest.raises(ConfigurationError, match="argon2id"):
        check_hasher(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I))
    fast = make_hasher(1, 8, 1)
    assert check_hasher(fast) is fast

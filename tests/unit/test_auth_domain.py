"""The auth domain's rules: input limits, refresh-token verdicts, signing-key lifecycle, login limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from services.auth.domain import (
    LoginLimits,
    RefreshVerdict,
    SigningKey,
    StoredRefreshToken,
    TokenPolicy,
    User,
    access_claims,
    check_login_input,
    check_password,
    current_signing_key,
    due_for_rotation,
    generate_signing_key,
    hash_refresh_token,
    judge_refresh,
    login_blocked,
    new_refresh_token,
    normalize_display_name,
    normalize_email,
    published_keys,
    rotation_plan,
)
from services.kit.errors import InvalidArgument

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def key(kid: str, active_from: datetime, retired_at: datetime | None = None) -> SigningKey:
    return SigningKey(kid, "pem", active_from, active_from, retired_at)


# -------------------------------------------------------------------- input


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Ada.Lovelace@Example.COM ") == "ada.lovelace@example.com"


@pytest.mark.parametrize(
    "email", ["", "no-at-sign", "two@@example.com", "a@b", "spaces in@example.com", "x" * 250 + "@e.co"]
)
def test_bad_emails_name_the_field(email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize_email(email)
    assert caught.value.field == "email"


@pytest.mark.parametrize(
    ("password", "ok"), [("x" * 11, False), ("x" * 12, True), ("x" * 128, True), ("x" * 129, False)]
)
def test_password_length_limits(password: str, ok: bool) -> None:
    if ok:
        assert check_password(password) == password
    else:
        with pytest.raises(InvalidArgument, match="12–128 characters"):
            check_password(password)


def test_display_names_are_trimmed_and_bounded() -> None:
    assert normalize_display_name("  Ada  ") == "Ada"
    with pytest.raises(InvalidArgument, match="display_name"):
        normalize_display_name("   ")
    with pytest.raises(InvalidArgument, match="display_name"):
        normalize_display_name("n" * 101)


def test_login_input_is_only_bounded_not_judged() -> None:
    assert check_login_input(" A@B.example ", "short") == "a@b.example"
    with pytest.raises(InvalidArgument, match="password"):
        check_login_input("a@b.example", "")


# ----------------------------------------------------------------- tokens


def test_access_claims_follow_the_contract() -> None:
    user = User("u-1", "ada@example.com", "Ada", NOW)
    policy = TokenPolicy("https://issuer", "aud", access_ttl=timedelta(minutes=15), refresh_ttl=timedelta(days=30))
    claims = access_claims(user, policy, NOW, token_id="t-1")
    assert claims == {
        "sub": "u-1",
        "email": "ada@example.com",
        "name": "Ada",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 900,
        "iss": "https://issuer",
        "aud": "aud",
        "jti": "t-1",
        "token_use": "access",
    }


def test_refresh_tokens_are_random_and_stored_only_as_hashes() -> None:
    first, second = new_refresh_token(), new_refresh_token()
    assert first != second
    assert len(first) >= 48
    assert hash_refresh_token(first) != first
    assert hash_refresh_token(first) == hash_refresh_token(first)


@pytest.mark.parametrize(
    ("stored", "verdict"),
    [
        (None, RefreshVerdict.UNKNOWN),
        (StoredRefreshToken("s", "u", NOW + HOUR, None, None), RefreshVerdict.VALID),
        (StoredRefreshToken("s", "u", NOW - HOUR, None, None), RefreshVerdict.EXPIRED),
        (StoredRefreshToken("s", "u", NOW + HOUR, NOW, None), RefreshVerdict.REUSED),
        (StoredRefreshToken("s", "u", NOW + HOUR, None, NOW), RefreshVerdict.REVOKED),
        (StoredRefreshToken("s", "u", NOW + HOUR, NOW, NOW), RefreshVerdict.REVOKED),
    ],
)
def test_refresh_verdicts(stored: StoredRefreshToken | None, verdict: str) -> None:
    assert judge_refresh(stored, NOW) == verdict


# ------------------------------------------------------------ signing keys


def test_the_newest_key_that_signs_now_is_used() -> None:
    old = key("old", NOW - 10 * HOUR, retired_at=NOW - HOUR)
    current = key("current", NOW - HOUR)
    pending = key("next", NOW + HOUR)
    assert current_signing_key([old, current, pending], NOW) == current
    assert current_signing_key([pending], NOW) is None


def test_published_keys_include_the_pending_one_and_retired_ones_while_their_tokens_live() -> None:
    lifetime = timedelta(minutes=15)
    long_retired = key("long-retired", NOW - 10 * HOUR, retired_at=NOW - HOUR)
    just_retired = key("just-retired", NOW - 5 * HOUR, retired_at=NOW - timedelta(minutes=5))
    current = key("current", NOW - timedelta(minutes=5))
    pending = key("next", NOW + timedelta(seconds=6))
    kids = [k.kid for k in published_keys([long_retired, just_retired, current, pending], NOW, lifetime)]
    assert kids == ["next", "current", "just-retired"]


def test_rotation_publishes_a_successor_ahead_and_retires_the_rest_when_it_starts() -> None:
    current = key("current", NOW - HOUR)
    successor, retiring = rotation_plan([current], NOW, publish_ahead=timedelta(seconds=6))
    assert successor.active_from == NOW + timedelta(seconds=6)
    assert retiring == [current]
    assert successor.signs_at(NOW + timedelta(seconds=6))
    assert not successor.signs_at(NOW)


def test_generated_keys_sign_tokens_their_public_jwk_verifies() -> None:
    generated = generate_signing_key(NOW, NOW)
    token = jwt.encode({"sub": "u"}, generated.private_key(), algorithm="RS256", headers={"kid": generated.kid})
    public = jwt.PyJWK(generated.public_jwk())
    assert jwt.decode(token, public.key, algorithms=["RS256"])["sub"] == "u"
    assert set(generated.public_jwk()) == {"kty", "kid", "use", "alg", "n", "e"}


@pytest.mark.parametrize(
    ("keys", "due"),
    [
        ([], True),
        ([key("current", NOW - timedelta(days=8))], True),
        ([key("current", NOW - timedelta(days=1))], False),
        ([key("current", NOW - timedelta(days=8)), key("next", NOW + HOUR)], False),
    ],
)
def test_rotation_is_due_when_no_key_signs_or_the_key_is_old(keys: list[SigningKey], due: bool) -> None:
    assert due_for_rotation(keys, NOW, max_age=timedelta(days=7)) is due


# ------------------------------------------------------------ login limits


LIMITS = LoginLimits(failures_per_account=5, failures_per_address=50, window=timedelta(minutes=5))


def test_logins_are_allowed_below_both_limits() -> None:
    assert login_blocked(4, 49, LIMITS) is None


def test_an_account_is_locked_after_its_failures() -> None:
    assert login_blocked(5, 0, LIMITS) == "too many failed logins for this account; retry in 300 s"


def test_an_address_is_locked_after_its_failures() -> None:
    refusal = login_blocked(0, 50, LIMITS)
    assert refusal is not None
    assert "from this address" in refusal

import pytest

from schemas.errors import FSSError
from schemas.urn import FunctionUrn


def test_round_trip_with_and_without_version() -> None:
    text = "urn:fss:cn-north-4:7aad83af3e8d42e99ac194e8419e2c9b:function:default:test:latest"
    urn = FunctionUrn.parse(text)
    assert (urn.region, urn.project_id, urn.package, urn.name, urn.qualifier) == (
        "cn-north-4", "7aad83af3e8d42e99ac194e8419e2c9b", "default", "test", "latest"
    )  # fmt: skip
    assert str(urn) == text
    assert FunctionUrn.parse(text.rsplit(":", 1)[0]) == urn
    assert urn.unqualified == text.rsplit(":", 1)[0]


def test_smn_side_cff_form_is_accepted() -> None:
    urn = FunctionUrn.parse("urn:cff:regionId:66e0f4622d6f4e3fb2db2e495298a61a:function:DEFAULT:mytest:latest")
    assert str(urn) == "urn:fss:regionId:66e0f4622d6f4e3fb2db2e495298a61a:function:default:mytest:latest"


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("urn:fss:r:p:function:default", "expected"),
        ("arn:aws:lambda:r:p:function:f", "expected"),
        ("urn:fss:r:p:functions:default:f:latest", "expected"),
        ("urn:fss:r:p:function:default:1bad:latest", "bad function name"),
        ("urn:fss:r:p:function:de fault:f:latest", "bad package"),
        ("urn:fss:r:p/x:function:default:f:latest", "bad project_id"),
        ("urn:fss:r:p:function:default:f:v/1", "bad version"),
    ],
)
def test_bad_urns_say_what_is_wrong(text: str, part: str) -> None:
    with pytest.raises(FSSError) as err:
        FunctionUrn.parse(text)
    assert err.value.status == 400
    assert part in err.value.message
    assert FunctionUrn.try_parse(text) is None

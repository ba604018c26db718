"""The checks of provider webhooks that need no server: where an SNS certificate may come
from, the canonical string SNS signs, basic auth."""

import base64

import pytest

from digest.errors import WebhookRefused
from digest.settings import Settings
from digest.web.providers.signatures import allowed_url, sns_string_to_sign, verify_basic


def test_the_sns_certificate_host_must_be_an_https_sns_host_by_default():
    hosts = Settings().sns_cert_hosts
    assert allowed_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
                       hosts)
    for url in ("http://sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
                "https://bucket.s3.amazonaws.com/x.pem",
                "https://sns.a.b.amazonaws.com/x.pem",
                "https://user@sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com:abc/x.pem", "not a url"):
        assert not allowed_url(url, hosts), url




def test_the_sns_canonical_string_leaves_out_a_missing_subject_and_refuses_missing_fields():
    message = {"Type": "Notification", "Message": "m", "MessageId": "1", "Timestamp": "t",
               "TopicArn": "arn"}
    assert sns_string_to_sign(message) == (
        b"Message\nm\nMessageId\n1\nTimestamp\nt\nTopicArn\narn\nType\nNotification\n")
    with_subject = dict(message, Subject="s")
    assert b"Subject\ns\n" in sns_string_to_sign(with_subject)
    with pytest.raises(WebhookRefused, match="lacks Token"):
        sns_string_to_sign(dict(message, Type="SubscriptionConfirmation", SubscribeURL="u"))


@pytest.mark.parametrize("header", [
    None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"user").decode(),
    "Basic " + base64.b64encode(b"user:wrong").decode(),
])
def test_basic_auth_is_refused_with_401_unless_both_parts_match(header):
    with pytest.raises(WebhookRefused) as refused:
        verify_basic(header, "user", "right")
    assert refused.value.status == 401


def test_basic_auth_with_both_parts_passes():
    verify_basic("Basic " + base64.b64encode(b"user:right").decode(), "user", "right")

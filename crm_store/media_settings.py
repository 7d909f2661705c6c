"""Settings of the media store (the `media:` section): where customers' images, voice, video and files are kept.

The default keeps them in a local directory; `backend: s3` keeps them in any S3-compatible object
store (AWS S3, MinIO, Ceph, COS, OSS). Credentials come from the environment
(`SCRM__MEDIA__S3__ACCESS_KEY_ID`, `SCRM__MEDIA__S3__SECRET_ACCESS_KEY`); left empty, the usual
AWS chain (AWS_* variables, an instance role) is asked instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MIB = 1024 * 1024

# S3's own rule for bucket names (lower case, digits, dots, hyphens, 3-63 characters).
BUCKET_NAME = r"^$|^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


class MediaMaxBytes(BaseModel):
    """The largest item kept per kind, in bytes; anything larger is refused before it is stored.

    The defaults are WeChat's own limits for temporary media (WeCom `media/upload`: image 10 MB,
    voice 2 MB, video 10 MB, file 20 MB; the Official Account's `media/upload`: image 10 MB,
    voice 2 MB, video 10 MB), so what the platforms hand us fits and what we keep can be sent back.
    """

    model_config = ConfigDict(extra="forbid")

    image: int = Field(default=10 * MIB, gt=0)
    voice: int = Field(default=2 * MIB, gt=0)
    video: int = Field(default=10 * MIB, gt=0)
    file: int = Field(default=20 * MIB, gt=0)


class S3MediaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint_url: str = ""  # empty: AWS itself; e.g. http://127.0.0.1:9000 for MinIO
    region: str = "us-east-1"
    bucket: str = Field(default="", pattern=BUCKET_NAME)
    prefix: str = ""  # keys are stored under <prefix>/ (one bucket may serve several brands)
    access_key_id: SecretStr = SecretStr("")
    secret_access_key: SecretStr = SecretStr("")
    addressing_style: Literal["path", "virtual", "auto"] = "path"  # path: what S3-compatible servers speak
    create_bucket: bool = False  # a missing bucket is an error unless this says to create it

    @field_validator("prefix")
    @classmethod
    def _prefix_segments(cls, value: str) -> str:
        prefix = value.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise ValueError("must be plain path segments separated by '/', e.g. scrm/media")
        return prefix


LINK_TTL_S = 7 * 24 * 3600  # a link to a stored item (a rep's card, a forwarded photo) works this long
LINK_SECRET_MIN = 16


class MediaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "s3"] = "local"
    directory: str = Field(default="var/media", min_length=1)  # local: relative to the working directory
    s3: S3MediaSettings = S3MediaSettings()
    max_bytes: MediaMaxBytes = MediaMaxBytes()
    # Signs the expiring links to stored items (GET /media/{id}); empty: no links are made (logged at start-up).
    link_secret: SecretStr = SecretStr("")
    link_ttl_s: int = Field(default=LINK_TTL_S, ge=60, le=90 * 24 * 3600)

    @field_validator("link_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value() and len(value.get_secret_value()) < LINK_SECRET_MIN:
            raise ValueError(f"must be at least {LINK_SECRET_MIN} characters (a random string)")
        return value

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> MediaSettings:
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("media.backend s3 needs media.s3.bucket (env SCRM__MEDIA__S3__BUCKET)")
        return self

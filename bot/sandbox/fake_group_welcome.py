"""入群欢迎语素材 (group welcome templates) for the fake API: add, edit, get, del.

https://developer.work.weixin.qq.com/document/path/92366: "每个企业的入群欢迎语素材库中，最多容纳100个素材";
text.content "最长为3000字节"; link.title "最长为128字节" and link.url required, link.desc "最长为512字节";
miniprogram.title "最长为64字节" with pic_media_id, appid and page required; file.media_id and video.media_id
required; image takes a media_id or a pic_url; "text、image、link、miniprogram、file、video不能全部为空"; text goes
with one other kind as two messages. WeCom sends the template itself when someone joins a group whose owner
applied it, so the fake only keeps them (`group_welcome_templates`, by template_id).

Refusals: 45002 for a field over its size (消息内容大小超过限制, document 90313); 40007 for a media_id the fake
does not hold; 40058 (不合法的参数) for a template with nothing in it, a missing required field, an unknown
template_id or a full library. The page names no codes for these: those are the global codes that fit.
Several kinds besides text in one template are refused (40058), the stricter reading of the page.
"""

from __future__ import annotations

import itertools
from typing import Any

from bot.sandbox.fake_media import FakeMediaStore
from bot.sandbox.fake_quotas import ApiRefusal

LIBRARY_MAX = 100
TEXT_BYTES = 3000
TOO_LONG, BAD_PARAMETER, BAD_MEDIA = 45002, 40058, 40007
# kind -> {field: (required, max bytes or 0)}
ATTACHMENTS: dict[str, dict[str, tuple[bool, int]]] = {
    "image": {"media_id": (False, 0), "pic_url": (False, 0)},
    "link": {"title": (True, 128), "url": (True, 0), "picurl": (False, 0), "desc": (False, 512)},
    "miniprogram": {"title": (True, 64), "pic_media_id": (True, 0), "appid": (True, 0), "page": (True, 0)},
    "file": {"media_id": (True, 0)},
    "video": {"media_id": (True, 0)},
}
MEDIA_FIELDS = frozenset({"media_id", "pic_media_id"})


class FakeGroupWelcome(FakeMediaStore):
    """Mixin of FakeWeChat (through FakeGroupChats): the enterprise's group welcome templates."""

    def init_group_welcome(self) -> None:
        self.group_welcome_templates: dict[str, dict[str, Any]] = {}  # template_id -> text and one attachment
        self._template_numbers = itertools.count(1)

    def group_welcome_routes(self) -> dict[str, Any]:
        return {"externalcontact/group_welcome_template/add": self.welcome_template_add,
                "externalcontact/group_welcome_template/edit": self.welcome_template_edit,
                "externalcontact/group_welcome_template/get": self.welcome_template_get,
                "externalcontact/group_welcome_template/del": self.welcome_template_del}

    async def welcome_template_add(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        if len(self.group_welcome_templates) >= LIBRARY_MAX:
            raise ApiRefusal(BAD_PARAMETER, f"the library holds {LIBRARY_MAX} templates")
        template = self._template(body)
        template_id = f"msgTpl{next(self._template_numbers):06d}"
        self.group_welcome_templates[template_id] = template
        return {"template_id": template_id}

    async def welcome_template_edit(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The kinds given replace the template's; the ones not given stay."""
        template_id = self._known_template(body)
        given = {key: value for key, value in body.items() if key == "text" or key in ATTACHMENTS}
        kept = {key: value for key, value in self.group_welcome_templates[template_id].items()
                if key not in given and not (key in ATTACHMENTS and set(given) & set(ATTACHMENTS))}
        self.group_welcome_templates[template_id] = self._template({**kept, **given})
        return {}

    async def welcome_template_get(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.group_welcome_templates[self._known_template(body)])

    async def welcome_template_del(self, _request: Any, body: dict[str, Any]) -> dict[str, Any]:
        del self.group_welcome_templates[self._known_template(body)]
        return {}

    def _known_template(self, body: dict[str, Any]) -> str:
        template_id = str(body.get("template_id") or "")
        if template_id not in self.group_welcome_templates:
            raise ApiRefusal(BAD_PARAMETER, f"invalid template_id {template_id!r}")
        return template_id

    def _template(self, body: dict[str, Any]) -> dict[str, Any]:
        """The template as it will be kept, or the refusal: text within 3000 bytes, at most one other kind."""
        template: dict[str, Any] = {}
        text = body.get("text")
        if text is not None:
            content = str(text.get("content") or "") if isinstance(text, dict) else ""
            if len(content.encode()) > TEXT_BYTES:
                raise ApiRefusal(TOO_LONG, f"text.content over {TEXT_BYTES} bytes")
            if content:
                template["text"] = {"content": content}
        kinds = [kind for kind in ATTACHMENTS if body.get(kind)]
        if len(kinds) > 1:
            raise ApiRefusal(BAD_PARAMETER, f"one kind besides text, not {', '.join(kinds)}")
        for kind in kinds:
            template[kind] = self._attachment(kind, body[kind])
        if not template:
            raise ApiRefusal(BAD_PARAMETER, "text, image, link, miniprogram, file and video cannot all be empty")
        return template

    def _attachment(self, kind: str, part: Any) -> dict[str, str]:
        if not isinstance(part, dict):
            raise ApiRefusal(BAD_PARAMETER, f"{kind} must be an object")
        kept: dict[str, str] = {}
        for name, (required, max_bytes) in ATTACHMENTS[kind].items():
            value = str(part.get(name) or "")
            if required and not value:
                raise ApiRefusal(BAD_PARAMETER, f"{kind}.{name} missing")
            if max_bytes and len(value.encode()) > max_bytes:
                raise ApiRefusal(TOO_LONG, f"{kind}.{name} over {max_bytes} bytes")
            if value and name in MEDIA_FIELDS:
                self._live_media(value)  # 40007 for an id unknown or past its 3 days
            if value:
                kept[name] = value
        if kind == "image" and not kept:
            raise ApiRefusal(BAD_PARAMETER, "image needs media_id or pic_url")
        return kept

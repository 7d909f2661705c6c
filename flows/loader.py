"""Flows as data: YAML files → a checked FlowSet, or every error at once.

A flow directory holds one flow per `*.yaml`/`*.yml` file, plus `tags.yaml` (the tag
catalog: `groups: {意向: [高意向, 低意向]}`, each tag in one group), `rules.yaml`
(`rules: [{id: price_thrice, when: {intent: ask_price, count: 3}, tag: 高意向, set_stage: interested}]`)
and `faq.yaml` (the FAQ: `faq: [{id, title, questions: [...], answer, ...}]`; its format is in
flows/faq_model.py, its checks in flows/faq.py). All of them are published together as one release.

    flow: price_question            # id: [a-z][a-z0-9_]*, unique across files
    description: 询价
    priority: 60                    # 0..100, default 50: a stronger flow may interrupt
    interruptible: true
    timeout: 30m                    # inactivity: seconds, or 90s 30m 2h 1d (default 30m)
    slots: [product]                # slots NLU entities fill when the flow starts
    triggers:                       # one kind each: intent keywords regex event stage tag external faq media
      - {intent: ask_price, min_confidence: 0.7}
      - keywords: [多少钱, 价格]      # compared in normal form (NFKC, case-folded, no spaces)
      - regex: "报价|价目表"          # RE2: linear time, no backreferences or lookaround
      - {event: enter_session, channel: kf, code: "inv_"}   # code: prefix of the entry code
      - stage: 意向                 # entering a stage (id or label); or tag: 高意向 (tag added)
      - external: order_shipped     # another system's event (POST /api/v1/events); its data fill declared slots
      # - faq: delivery_time        # an entry of faq.yaml: this flow answers it instead of the FAQ's answer
      - media: [image, video]       # a message carrying one of these and no words: image voice video file location
                                    # link miniprogram card channels merged, or any (a transcribed voice note is text)
    steps:                          # id optional ("step<N>", 1-based); next: defaults to the following step
      - id: ask_product
        ask: 您想了解哪款商品？         # expect: text|phone|number|email|intent (+ intents: [...])
                                    #   |choice (+ choices: [{id, text, goto}])
                                    #   |image|voice|video|file|media (any of those: the slot holds the reference
                                    #    media:<channel>:<media_id>)|location (the slot holds "lat,lng label")
        slot: product
        retries: 2                  # 0..5; reprompt: defaults to the prompt
        on_fail: human              # default: end of flow; timeout: 10m + on_timeout: step
      - say: "{{ slots.product }} 现在 99 元，{{ customer.name }}"
        menu: [{id: buy, text: 我要买, goto: hot}]
        links: [{title: 详情, url: "https://example.com/p"}]   # also miniprogram: {appid, pagepath, title}
      - say: 这是我们的新品
        image: assets/new.png       # or file: / voice: (.amr) / video: (.mp4): a file here, or an https URL
      - id: decide
        branch:                     # when: intent, slot (+ equals), tag, not_tag, stage, check, social_min,
                                    #   content (the message's kind: text, image, location… or any, as media:)
          - {when: {intent: [affirm]}, goto: hot}
          - else: bye               # default: next
      - {id: hot, tag: [高意向], untag: 低意向}
      - set_stage: interested       # id or label
      - action: group_buy.open      # one of flows.model.ACTIONS, params: {...}
      - {wait: {for: 1d, reply: true, on_reply: decide}}   # or wait: 1h
      - call: coupon                # a sub-flow, then carry on; goto: step or goto: {flow: other} (no return)
      - marketing: stop             # or resume
      - {id: bye, end: 感谢咨询}      # or end: null
      - {id: human, handoff: {reason: price, message: 正在为您转人工…}}   # or handoff: price

Templates show only `{{ dotted.name }}` fields (flows/templates.py): TEMPLATE_FIELDS and
`slots.<name>` for slots an ask, an action or the flow's `slots:` fills.

Loading takes three steps, and reports every error of every file before giving up:
1. schema (flows/yaml_source.py, flows/schema.py): safe YAML, shapes, types, ranges,
   unknown keys with "did you mean", each error with its file and line;
2. typed objects (flows/build.py): the frozen dataclasses of flows/model.py;
3. semantic checks (flows/checks.py, flows/graph.py): names, reachability, loops, calls.
faq.yaml goes through the same three steps (flows/faq.py), its errors reported with the flows'.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from crm_store.lifecycle_settings import LifecycleSettings
from flows.build import build_catalog, build_flow, build_rules
from flows.checks import Names, check_all
from flows.errors import FlowError, FlowLoadError, Reporter
from flows.faq import build_faq, check_faq, check_faq_file
from flows.faq_model import FAQ_FILE, FaqBook
from flows.model import FlowSet
from flows.schema import check_file
from flows.yaml_source import MAX_BYTES, Node, human_size, parse_yaml

__all__ = [
    "FAQ_FILE",
    "FlowError",
    "FlowLoadError",
    "intents_of_domain",
    "load_directory",
    "load_sources",
    "read_directory",
    "read_paths",
]

TAGS_FILE = "tags.yaml"
RULES_FILE = "rules.yaml"
MAX_FILES = 500
_SUFFIXES = (".yaml", ".yml")


def load_sources(
    sources: dict[str, str], lifecycle: LifecycleSettings, known_intents: frozenset[str] | None = None,
    assets: Path | None = None,
) -> FlowSet:
    """The FlowSet of `sources` (file name -> YAML text), or FlowLoadError with every error found.

    `assets`: the flow directory, where the files say steps send (image: assets/logo.png) are looked
    at; without it (a release read back from the store) only their paths are checked."""
    errors: list[FlowError] = []
    reporters = {name: Reporter(name, errors) for name in sources}
    trees, failed_ids = _schema_step(sources, reporters)  # step 1
    # Step 2. A catalog that failed step 1 is not used to judge tags (its errors are reported already).
    catalog = build_catalog(trees.pop(TAGS_FILE, None))
    rules_tree = trees.pop(RULES_FILE, None)
    rules = build_rules(RULES_FILE, rules_tree, lifecycle) if rules_tree is not None else None
    faq_tree = trees.pop(FAQ_FILE, None)
    faq = build_faq(faq_tree, lifecycle) if faq_tree is not None else FaqBook()
    drafts = [build_flow(name, tree, lifecycle) for name, tree in sorted(trees.items())]
    # Step 3. A FAQ that failed step 1 is not used to judge faq triggers either.
    flows = {draft.flow.id: draft.flow for draft in drafts if draft.flow is not None}
    tags = None if TAGS_FILE in failed_ids else catalog.tags
    faq_ids = None if FAQ_FILE in failed_ids else frozenset(faq.entries)
    names = Names(frozenset(flows) | failed_ids, tags, lifecycle, known_intents, faq_ids, assets)
    check_all(drafts, rules, names, reporters)
    if faq_tree is not None:
        check_faq(faq_tree, names, reporters[FAQ_FILE])
    if errors:
        raise FlowLoadError(errors)
    rule_set = rules.rules if rules else ()
    return FlowSet(flows=flows, tags=catalog, rules=rule_set, faq=faq, sources=dict(sources))


def _schema_step(sources: dict[str, str], reporters: dict[str, Reporter]) -> tuple[dict[str, Node], set[str]]:
    """Trees of the files without errors; and the flow ids (or file names) of those with errors."""
    trees: dict[str, Node] = {}
    failed: set[str] = set()
    for name, text in sorted(sources.items()):
        report = reporters[name]
        before = report.count
        if not name.endswith(_SUFFIXES):
            report.error(0, "not a flow file: flow files end in .yaml or .yml")
            continue
        tree = parse_yaml(text, report)
        if tree is not None:
            check_faq_file(tree, report) if name == FAQ_FILE else check_file(name, tree, report)
        if report.count == before and tree is not None:
            trees[name] = tree
        else:
            flow_id = tree.get("flow") if tree is not None else None
            failed.add(flow_id.text if flow_id is not None and flow_id.text else name)  # names it in step 3
    return trees, failed


def read_directory(path: Path) -> dict[str, str]:
    """File name -> text of the `*.yaml`/`*.yml` files in `path` (not its sub-folders)."""
    errors: list[FlowError] = []
    if not path.is_dir():
        raise FlowLoadError([FlowError(str(path), 0, "not a directory")])
    files = sorted(entry for entry in path.iterdir() if entry.suffix in _SUFFIXES and entry.is_file())
    if len(files) > MAX_FILES:
        raise FlowLoadError([FlowError(str(path), 0, f"{len(files)} flow files; at most {MAX_FILES}")])
    sources = {file.name: text for file in files if (text := _read_file(file, errors)) is not None}
    if errors:
        raise FlowLoadError(errors)
    return sources


def read_paths(paths: list[Path], base: dict[str, str]) -> dict[str, str]:
    """`base` (the configured directory), where files and folders given on the command line replace
    the files of the same name: what `scrm flows validate PATH...` checks."""
    errors: list[FlowError] = []
    sources = dict(base)
    for path in paths:
        if path.is_dir():
            try:
                sources.update(read_directory(path))
            except FlowLoadError as exc:
                errors.extend(exc.errors)
        elif not path.is_file():
            errors.append(FlowError(str(path), 0, "no such file or directory"))
        elif path.suffix not in _SUFFIXES:
            errors.append(FlowError(str(path), 0, "not a flow file: flow files end in .yaml or .yml"))
        elif (text := _read_file(path, errors)) is not None:
            sources[path.name] = text
    if errors:
        raise FlowLoadError(errors)
    return sources


def load_directory(
    path: Path, lifecycle: LifecycleSettings, known_intents: frozenset[str] | None = None
) -> FlowSet:
    """`read_directory` then `load_sources`, the directory's media files looked at too."""
    return load_sources(read_directory(path), lifecycle, known_intents, path)


def intents_of_domain(domain_yml: Path) -> frozenset[str]:
    """The intents a Rasa domain.yml lists (plain names, or `{name: {...}}` entries)."""
    try:
        domain = yaml.safe_load(domain_yml.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FlowLoadError([FlowError(str(domain_yml), 0, f"cannot read the NLU domain: {exc}")]) from None
    intents = domain.get("intents", []) if isinstance(domain, dict) else []
    names = set()
    for intent in intents if isinstance(intents, list) else []:
        names |= set(intent) if isinstance(intent, dict) else {str(intent)}
    return frozenset(str(name) for name in names)


def _read_file(path: Path, errors: list[FlowError]) -> str | None:
    """The file's text; its size is checked before reading, and at most MAX_BYTES + 1 bytes are read."""
    name = path.name
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            errors.append(
                FlowError(name, 0, f"file is {human_size(size)}; the limit is {human_size(MAX_BYTES)}")
            )
            return None
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        errors.append(FlowError(name, 0, f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_BYTES:
        errors.append(FlowError(name, 0, f"file is larger than {human_size(MAX_BYTES)}"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        errors.append(
            FlowError(name, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x}): save the file as UTF-8")
        )
        return None

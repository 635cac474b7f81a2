"""Prompt templates are versioned files: YAML with name, version, description and a Jinja2 template.

    t = load_template("abstain")                 # shipped template by name
    t = load_template("my-prompts/strict.yaml")  # or any file
    t.render(question="What is the capital of Chad?")

Variables: `question` always; `context` for templates that declare `requires: [context]`.
Undefined variables are errors (StrictUndefined): a typo must not silently render as "".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError, did_you_mean

TEMPLATE_DIR = Path(__file__).parent / "templates"
KNOWN_VARIABLES = {"question", "context"}
REQUIRED_KEYS = ("name", "version", "template")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    template: str
    description: str = ""
    requires: tuple[str, ...] = ()
    source: str = ""
    _compiled: object = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def needs_context(self) -> bool:
        return "context" in self.requires

    def render(self, question: str, context: str | None = None) -> str:
        if self.needs_context and context is None:
            raise TunelabError(f"template '{self.name}' needs a context", "use it with retrieval (RAG), or choose a closed-book template")
        values = {"question": question.strip()}
        if context is not None:
            values["context"] = context
        from jinja2 import UndefinedError

        try:
            return self._compiled.render(**values).strip()  # type: ignore[union-attr]
        except UndefinedError as error:
            raise TunelabError(f"template '{self.name}' ({self.source}): {error.message}", f"templates may use only {sorted(KNOWN_VARIABLES)}") from None


def shipped_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def load_template(name_or_path: str | Path) -> PromptTemplate:
    """A shipped template by name, or a YAML file; every problem is a one-line TunelabError."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_file():
        if text in shipped_names():
            path = TEMPLATE_DIR / f"{text}.yaml"
        elif text.endswith((".yaml", ".yml")) or "/" in text:
            raise TunelabError(f"template file '{text}' not found", "check the path, or use a shipped template: " + ", ".join(shipped_names()))
        else:
            raise TunelabError(f"unknown template '{text}'{did_you_mean(text, shipped_names())}", "shipped templates: " + ", ".join(shipped_names()))
    return parse_template(path.read_text(encoding="utf-8"), str(path))


def parse_template(text: str, source: str = "<string>") -> PromptTemplate:
    import yaml
    from jinja2 import Environment, StrictUndefined, TemplateSyntaxError, meta

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise TunelabError(f"{source} is not valid YAML{line}", "check indentation and quoting; a multi-line template goes under `template: |-`") from None
    if not isinstance(data, dict):
        raise TunelabError(f"{source} must be a YAML mapping", "write name:, version:, template: keys")
    missing = [k for k in REQUIRED_KEYS if data.get(k) in (None, "")]
    if missing:
        raise TunelabError(f"{source} lacks {', '.join(missing)}", "a template needs name, version and template")
    unknown = set(data) - {"name", "version", "template", "description", "requires"}
    if unknown:
        raise TunelabError(f"{source} has unknown keys: {', '.join(sorted(unknown))}", "allowed: name, version, description, requires, template")
    if not isinstance(data["template"], str):
        raise TunelabError(f"{source}: template must be text", "put the Jinja2 text under `template: |-`")
    requires = data.get("requires") or []
    if isinstance(requires, str):
        requires = [requires]
    bad = [r for r in requires if r not in KNOWN_VARIABLES]
    if bad:
        raise TunelabError(f"{source}: unknown required variable(s) {bad}", f"known variables: {sorted(KNOWN_VARIABLES)}")
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)
    try:
        parsed = env.parse(data["template"])
    except TemplateSyntaxError as error:
        raise TunelabError(f"{source}: Jinja2 syntax error in template line {error.lineno}: {error.message}", "check {{ }} and {% %} pairs") from None
    used = meta.find_undeclared_variables(parsed)
    if "question" not in used:
        raise TunelabError(f"{source}: the template never uses {{{{ question }}}}", "put {{ question }} where the question goes")
    extra = used - KNOWN_VARIABLES
    if extra:
        raise TunelabError(f"{source}: unknown variable(s) {sorted(extra)}", f"templates may use only {sorted(KNOWN_VARIABLES)}")
    if "context" in used and "context" not in requires:
        requires = [*requires, "context"]  # a template that shows context cannot run without it
    return PromptTemplate(
        name=str(data["name"]),
        version=str(data["version"]),
        template=data["template"],
        description=str(data.get("description") or ""),
        requires=tuple(requires),
        source=source,
        _compiled=env.from_string(data["template"]),
    )

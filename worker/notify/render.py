"""Email rendering: Jinja2 templates (HTML autoescaped, CSS inlined) and safe headers."""

from __future__ import annotations

import re
import sys
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import css_inline
import jinja2
import jinja2.meta
import jinja2.nodes

from ..errors import TemplateError

if TYPE_CHECKING:  # (the config checks a templates_dir with template_problems, below)
    from ..config import Config

_UNSAFE_HEADER_RE = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029]+")


def default_templates_dir() -> Path:
    """The templates/ folder shipped with Carewatch: beside the package in a checkout or an
    editable install, or under <prefix>/share/carewatch/templates in an installed wheel."""
    here = Path(__file__).resolve().parent.parent.parent / "templates"
    if (here / "base.html").exists():
        return here
    return Path(sys.prefix) / "share" / "carewatch" / "templates"


#: The templates Carewatch renders. A templates_dir may hold any of them; the rest are ours.
TEMPLATE_NAMES = ("base.html", "alert.txt", "alert.html", "digest.txt", "digest.html")

#: What each email's templates are given (firm_name for all). A template of one's own that
#: names anything else is refused when the config is checked, not at the first alert.
#: Renderer.render() holds every context to this list, so it cannot drift from the code.
CONTEXT = {
    "alert": frozenset({"firm_name", "subject", "items", "escalated", "recipient", "recipient_name", "token",
                        "now_local", "timezone", "clients"}),
    "digest": frozenset({"firm_name", "subject", "partner_name", "timezone", "week", "week_from", "week_to",
                         "reply_unit", "owner_unit", "figures",
                         "rag", "rag_pct", "at_risk", "clients", "owners", "unowned", "no_principal", "discovered",
                         "undelivered", "undelivered_total", "never_answered", "waits_expire_after"}),
}


def template_problems(folder: Path) -> list[str]:
    """What is wrong with a folder of one's own templates, for validation: it is not there,
    it holds none of ours (so ours would be used, silently), or one of them does not parse."""
    from ..config.values import not_usable

    why = not_usable(folder, "folder")
    if why:
        return [f"templates_dir: {why}"]
    present = [n for n in TEMPLATE_NAMES if not not_usable(folder / n, "file")]
    if not present:
        return [f"templates_dir: {folder} holds none of Carewatch's templates ({', '.join(TEMPLATE_NAMES)}), "
                "so the built-in ones would be used: copy the ones to change from templates/"]
    env = jinja2.Environment()
    problems = []
    for name in present:
        try:
            ast = env.parse((folder / name).read_text(encoding="utf-8"), name=name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"templates_dir: {_in_template(exc)}: {exc.message}")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"templates_dir: cannot read {name}: {exc}")
            continue
        # base.html is shared by both emails: it may use only what both are given.
        given = CONTEXT["alert"] & CONTEXT["digest"] if name == "base.html" else CONTEXT[name.partition(".")[0]]
        # A name tested with `is defined` is one the author knows may be missing (a base.html
        # that shows the recipient only in alerts): rendering copes with it, so it is no problem.
        guarded = {t.node.name for t in ast.find_all(jinja2.nodes.Test)
                   if t.name in ("defined", "undefined") and isinstance(t.node, jinja2.nodes.Name)}
        unknown = jinja2.meta.find_undeclared_variables(ast) - given - set(env.globals) - guarded
        for var in sorted(unknown):
            line = min((n.lineno for n in ast.find_all(jinja2.nodes.Name) if n.name == var), default=0)
            problems.append(f"templates_dir: {name}, line {line}: {var!r} is not given to this template "
                            f"(it has: {', '.join(sorted(given))})")
    return problems


def _in_template(exc: jinja2.TemplateError) -> str:
    """'alert.txt, line 3' for an error raised while rendering: Jinja2 rewrites the traceback
    so that a template's frames carry its file and line."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"{exc.name or exc.filename}, line {exc.lineno}"
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith((".html", ".txt")):
            where = f"{Path(filename).name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return where or "a template"


def safe_header(value: str, limit: int = 200) -> str:
    """One line, no control characters: a client name or subject cannot inject headers."""
    v = _UNSAFE_HEADER_RE.sub(" ", value).strip()
    return v if len(v) <= limit else v[: limit - 1] + "\u2026"


def plural(n: int, word: str, words: str | None = None) -> str:
    """`{{ n|plural('day') }}`: "1 day", "5 days" (`words` for an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


class Renderer:
    def __init__(self, config: Config) -> None:
        dirs = []
        if config.settings.templates_dir:
            dirs.append(str(config.settings.templates_dir))  # ops' own copies win
        dirs.append(str(default_templates_dir()))
        loader = jinja2.FileSystemLoader(dirs)
        self.html = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
        self.text = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                                       keep_trailing_newline=True)
        for env in (self.html, self.text):
            env.filters["plural"] = plural
        self.inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
        self.firm_name = config.settings.firm.name

    def render(self, name: str, context: dict[str, Any]) -> tuple[str, str]:
        """(text, html) for templates NAME.txt and NAME.html; the HTML has its CSS inlined, as
        Gmail and Outlook ignore most <style> blocks."""
        ctx = {"firm_name": self.firm_name, **context}
        assert ctx.keys() <= CONTEXT[name], f"add {sorted(ctx.keys() - CONTEXT[name])} to CONTEXT[{name!r}]"
        try:
            text = self.text.get_template(f"{name}.txt").render(ctx)
            html = self.html.get_template(f"{name}.html").render(ctx)
        except jinja2.TemplateError as exc:
            # Nothing is sent, and nothing is lost: the alerts stay due until this renders.
            raise TemplateError([f"template {_in_template(exc)}: {exc.message or exc}"],
                                note="Nothing was sent; what is due goes out once the template renders.") from exc
        return text, self.inliner.inline(html)


def build_email(*, from_addr: str, from_name: str, to: list[str], subject: str, text: str, html: str | None,
                message_id: str, reply_to: str | None = None, headers: dict[str, str] | None = None,
                date: Any = None, in_reply_to: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr((safe_header(from_name, 80), from_addr))
    msg["To"] = ", ".join(safe_header(a, 320) for a in to)
    msg["Subject"] = safe_header(subject)
    msg["Message-ID"] = message_id or make_msgid(domain="carewatch.local")
    if date is not None:
        msg["Date"] = format_datetime(date)
    if reply_to:
        msg["Reply-To"] = safe_header(reply_to, 320)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    # Nobody's auto-reply should answer us, and our own scan must recognise our mail.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    for k, v in (headers or {}).items():
        msg[k] = safe_header(v)
    # Quoted-printable keeps every line under SMTP's 1000-octet limit (inlined CSS makes long
    # HTML lines) and survives 7-bit relays.
    msg.set_content(text, cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg

"""The staff pages' languages: Bahasa Indonesia by default, English as a choice. One home for
every page that speaks to staff (the finance pages; the service desk's when it comes):

    env = i18n.environment("settlement", i18n.language_of(request))   # Jinja2, translated
    _ = i18n.translations("settlement", language).gettext              # for Python-side text

Text is written in English in the source: `{% trans %}...{% endtrans %}` or `_("...")` in a
template, `_("...")` in Python; its Indonesian is in `<package>/locale/id/LC_MESSAGES/messages.po`.
Only the `.po` is kept: Babel compiles it in memory the first time a language is used, so a
fresh clone (`./scripts/test`) and an installed package (the `.po` is package data) work alike,
with no build step and no `.mo` to forget. tests/settlement/test_translations.py checks that
every template's text is marked and every marked message has its Indonesian.

The language: the `ksh_lang` cookie (set by the switch on every page, `language_switch`),
else the browser's Accept-Language, else Indonesian.
"""

from __future__ import annotations

import functools
import gettext
import importlib.resources
import io
import urllib.parse

import jinja2
from aiohttp import web
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from settlement import formatting

languages = {"id": "Bahasa Indonesia", "en": "English"}
default_language = formatting.default_language
source_language = "en"  # what the msgids are written in: needs no catalog
language_cookie = "ksh_lang"
language_cookie_max_age = 365 * 24 * 3600


@functools.cache
def translations(package: str, language: str) -> gettext.NullTranslations:
    if language == source_language:
        return gettext.NullTranslations()
    po = importlib.resources.files(package) / "locale" / language / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)  # fuzzy entries are left out, as msgfmt does
    compiled.seek(0)
    return Translations(compiled)


@functools.cache
def environment(package: str, language: str) -> jinja2.Environment:
    """`package`'s templates (autoescaped) in `language`, with the filters every page uses:
    rupiah, number, day, moment (a datetime) and wib (milliseconds since the epoch)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(package, language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["rupiah"] = functools.partial(formatting.rupiah, language=language)
    env.filters["number"] = functools.partial(formatting.grouped, language=language)
    env.filters["day"] = functools.partial(formatting.day, language=language)
    env.filters["moment"] = functools.partial(formatting.moment, language=language)
    env.filters["wib"] = lambda time_ms: formatting.moment(
        formatting.from_epoch_ms(time_ms), language, seconds=True
    )
    env.globals["language"] = language
    env.globals["languages"] = languages
    return env


def negotiate(accept_language: str) -> str:
    """The first of our languages the browser asks for (by q), else Indonesian."""
    wanted = []
    for order, part in enumerate(accept_language.split(",")[:20]):
        tag, _, parameters = part.strip().partition(";")
        quality = 1.0
        if parameters.strip().startswith("q="):
            try:
                quality = float(parameters.strip()[2:])
            except ValueError:
                continue
        wanted.append((-quality, order, tag.strip().split("-")[0].lower()))
    for _, _, language in sorted(wanted):
        if language in languages:
            return language
    return default_language


def language_of(request: web.Request) -> str:
    chosen = request.cookies.get(language_cookie, "")
    if chosen in languages:
        return chosen
    return negotiate(request.headers.get("Accept-Language", ""))


def local_path(path: str, fallback: str) -> str:
    """A path on this site to go back to (never another site: no scheme, no //host)."""
    parsed = urllib.parse.urlsplit(path)
    if not path.startswith("/") or path.startswith("//") or parsed.scheme or parsed.netloc:
        return fallback
    return path


async def language_switch(request: web.Request) -> web.Response:
    """GET ?to=en&next=/finance/...: remember the language in a cookie and go back. A plain
    link: choosing a language changes nothing but how pages read."""
    language = request.query.get("to", "")
    if language not in languages:
        raise web.HTTPBadRequest(text="to: one of " + ", ".join(languages))
    response = web.HTTPSeeOther(local_path(request.query.get("next", "/"), "/"))
    response.set_cookie(
        language_cookie,
        language,
        max_age=language_cookie_max_age,
        path="/",
        samesite="Lax",
        httponly=True,
    )
    raise response

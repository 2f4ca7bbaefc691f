"""WordNet for METEOR's synonym stage, offline.

NLTK reads corpora only from its own data folders, and no corpus can be downloaded here. Debian's `wordnet-base`
(+ `wordnet-sense-index`) installs WordNet 3.0 in /usr/share/wordnet, which is the database NLTK's reader
expects, minus one file: `lexnames`. So the first call copies the database into
<tunesmith cache>/nltk_data/corpora/wordnet, writes `lexnames` from the table below (the 45 rows of the
lexnames(5WN) man page that wordnet-base installs), and puts <cache>/nltk_data first on nltk.data.path.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.models.registry import cache_dir

SYSTEM_WORDNET = Path("/usr/share/wordnet")
# The files NLTK's WordNetCorpusReader opens (data.*, index.*, *.exc) plus the sense index; bin/ and pixmaps/
# are Debian extras nobody reads.
_DB_FILES = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")] + \
    [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")] + ["index.sense"]
# lexnames(5WN): file number = position in this list; syntactic category 1 noun, 2 verb, 3 adjective, 4 adverb.
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
]
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class WordNetMissing(TunesmithError):
    """WordNet 3.0 is not installed, so METEOR cannot run its synonym stage."""


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def install_wordnet(source: Path = SYSTEM_WORDNET) -> Path:
    """Copy WordNet into the cache once (about 30 MB) and return the corpus folder."""
    target = nltk_data_dir() / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    missing = [name for name in _DB_FILES if not (source / name).is_file()]
    if missing:
        raise WordNetMissing(f"METEOR needs WordNet 3.0, but '{source}' lacks {', '.join(missing[:3])}",
                             "install the Debian packages wordnet-base and wordnet-sense-index "
                             "(`sudo apt-get install wordnet-base wordnet-sense-index`), or leave meteor out "
                             "of eval.metrics")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy into a temporary folder and rename, so a killed first run never leaves half a database behind.
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-wordnet-"))
    try:
        for name in _DB_FILES:
            shutil.copyfile(source / name, tmp / name)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="ascii")
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "lexnames").is_file():  # another process won the race otherwise
            raise
    return target


@functools.cache
def wordnet_reader():
    """A WordNetCorpusReader over the cached copy (built once per process: reading the index takes ~1 s)."""
    import warnings

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    install_wordnet()
    data_dir = str(nltk_data_dir())
    if data_dir not in nltk.data.path:
        nltk.data.path.insert(0, data_dir)
    with warnings.catch_warnings():
        # Without the Open Multilingual WordNet NLTK warns; METEOR only looks up English words.
        warnings.filterwarnings("ignore", message="The multilingual functions")
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)

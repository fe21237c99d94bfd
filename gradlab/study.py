"""Study files: TOML grids with fixed settings and profiles, `--set` overrides, typed and checked up front."""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .ladder import Ladder
from .names import suggest

TOP_KEYS = ("name", "measure", "description", "default_profile", "grid", "settings", "exclude", "when", "ladder", "profiles")
BECAUSE = "because"  # an exclusion rule's optional reason, said whenever the rule drops a point
PROFILE_KEYS = ("description", "grid", "settings", "exclude", "when", "ladder")
LADDER_KEYS = ("axis", "stop_after", "over")  # [ladder]: gradlab.ladder.Ladder
WHEN_KEYS = ("match", "settings", "because")  # [[when]]: settings for the points a match selects


class StudyError(ValueError):
    """A study file, profile or override that cannot be run; the message says what and where."""


@dataclass
class Study:
    name: str
    measure: str
    description: str
    grid: dict[str, list]
    settings: dict[str, Any]
    exclude: list[dict[str, Any]]
    profiles: dict[str, dict]
    source: str  # where it was read from, for messages and the manifest
    default_profile: str | None = None  # the profile a run without --profile uses
    when: list[dict] = field(default_factory=list)  # [[when]] tables: match, settings, because
    ladder: dict | None = None  # [ladder]: axis, stop_after, over


@dataclass
class Rule:
    """An exclusion: a point whose every named key takes one of the listed values is left out."""

    match: dict[str, list]
    because: str = ""

    def matches(self, point: dict) -> bool:
        return all(point.get(k) in vals for k, vals in self.match.items())

    def __str__(self) -> str:
        text = "{" + ", ".join(f"{k}={v[0]!r}" if len(v) == 1 else f"{k} in {v!r}" for k, v in self.match.items()) + "}"
        return f"{text} ({self.because})" if self.because else text


@dataclass
class Dropped:
    rule: Rule
    count: int
    combos: list[dict]  # the distinct values the dropped points had on the rule's keys, in grid order

    def __str__(self) -> str:
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in c.items()) for c in self.combos[:6])
        more = f"; and {len(self.combos) - 6} more" if len(self.combos) > 6 else ""
        return f"rule {self.rule} dropped {self.count} point{'s' * (self.count != 1)}: {shown}{more}"

@dataclass
class Resolved:
    """A study made concrete: every key of the measure's config with its list of values."""

    study: Study
    profile: str
    values: dict[str, list]  # key -> values (one value: fixed)
    axes: list[str]  # keys that are grid coordinates (declared as grid, or given several values)
    exclude: list[Rule] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)  # keys --set gave
    when: list[tuple[Rule, dict, int]] = field(default_factory=list)  # settings for the points each rule matches, and its level (1: a profile's)
    ladder: Ladder | None = None  # longer values of an axis not run once shorter ones failed (gradlab.ladder)


def studies_dir() -> Path:
    """The shipped study files: inside an installed wheel (gradlab/studies/), else the checkout's top-level
    studies/ (a source tree, or an editable install)."""
    packaged = importlib.resources.files("gradlab") / "studies"
    if packaged.is_dir() and any(p.name.endswith(".toml") for p in packaged.iterdir()):
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "studies"


def builtin_studies() -> dict[str, Path]:
    return {p.stem: p for p in sorted(studies_dir().glob("*.toml"))}


def known_studies() -> dict[str, tuple[Path, str]]:
    """Every study by name -> (its file, how messages name it): gradlab's own, then the installed plugins'
    (entry-point group gradlab.studies; a built-in name wins)."""
    from .plugins import study_files

    own = {name: (path, f"studies/{name}.toml") for name, path in builtin_studies().items()}
    return own | {name: found for name, found in study_files().items() if name not in own}


def load_study(ref: str | Path) -> Study:
    """A study by name (shipped with gradlab or an installed plugin) or by path to a TOML file."""
    path = Path(ref)
    source = str(ref)  # as the user named it: a shipped study reads 'studies/NAME.toml', no machine's path
    if not (path.suffix == ".toml" or path.is_file()):  # a folder named like a study is not a study file
        from .plugins import broken, entry_points, study_file

        own = builtin_studies()
        entry_points("studies")  # the installed plugins' names (their metadata, nothing imported): one that shadows a built-in is warned about
        found = (own[str(ref)], f"studies/{ref}.toml") if str(ref) in own else study_file(str(ref))  # a built-in name imports no plugin
        if found is None:
            if ("studies", str(ref)) in broken:
                raise StudyError(f"study {str(ref)!r} is an installed plugin's, which cannot be used: {broken[('studies', str(ref))]}.")
            raise StudyError(f"Unknown study {str(ref)!r}. {suggest(str(ref), [*own, *entry_points('studies')])} Or pass a path to a .toml file.")
        path, source = found
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark (some editors on Windows write one) is not TOML
    except UnicodeDecodeError as exc:
        raise StudyError(f"study file {source} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise StudyError(f"study file {source} nests its arrays or tables deeper than Python can read: a study is a few flat "
                         "tables (grid, settings, profiles); flatten it.") from None
    try:
        return parse_study(data, source)
    except RecursionError:
        raise StudyError(f"study file {source} nests its values deeper than any setting takes: flatten it.") from None


def _expect_table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a table, got {type(value).__name__}.")
    return value


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise StudyError(f"{where}: unknown key {key!r}. {suggest(key, list(allowed))}")


def _check_grid(grid: dict, where: str) -> dict[str, list]:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{where}.{key} must be a non-empty list of values, got {values!r}.")
    return grid


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")  # a study's or profile's name: it names the run's folder, runs/NAME-PROFILE


def check_name(name: str, what: str) -> None:
    if not NAME.fullmatch(name):
        raise StudyError(f"{what} {name!r} is not a name: letters, digits, '-', '_' and '.', starting with a letter or digit, "
                         "at most 80 characters (it names the run's folder, runs/STUDY-PROFILE).")


def _check_rules(rules: Any, where: str) -> list:
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise StudyError(f"{where} must be a list of tables like {{cell = 'linear', impl = 'cudnn', because = '...'}}, got {rules!r}.")
    return rules


def parse_study(data: dict, source: str) -> Study:
    _check_keys(data, TOP_KEYS, f"study file {source}")
    for key in ("name", "measure"):
        if not isinstance(data.get(key), str):
            raise StudyError(f"study file {source}: '{key}' (a string) is required.")
    check_name(data["name"], f"study file {source}: name")
    profiles = _expect_table(data.get("profiles", {}), f"{source}: profiles")
    for pname, prof in profiles.items():
        check_name(pname, f"study file {source}: profile")
        _check_rules(_expect_table(prof, f"{source}: profiles.{pname}").get("exclude", []), f"{source}: profiles.{pname}.exclude")
        _check_keys(_expect_table(prof, f"{source}: profiles.{pname}"), PROFILE_KEYS, f"{source}: profiles.{pname}")
        _check_grid(_expect_table(prof.get("grid", {}), f"{source}: profiles.{pname}.grid"), f"profiles.{pname}.grid")
        _expect_table(prof.get("settings", {}), f"{source}: profiles.{pname}.settings")
    exclude = _check_rules(data.get("exclude", []), f"{source}: exclude")
    for where, table in [("", data), *((f"profiles.{n}.", prof) for n, prof in profiles.items())]:
        when = table.get("when", [])
        if not isinstance(when, list) or not all(isinstance(w, dict) for w in when):
            raise StudyError(f"{source}: {where}when must be an array of tables [[when]] with match and settings.")
        for w in when:
            _check_keys(w, WHEN_KEYS, f"{source}: {where}when")
            _expect_table(w.get("match"), f"{source}: {where}when.match")
            _expect_table(w.get("settings"), f"{source}: {where}when.settings")
    for where, table in [("", data), *((f"profiles.{n}.", prof) for n, prof in profiles.items())]:
        if "ladder" in table:
            _check_ladder(table["ladder"], f"{source}: {where}ladder")
    default = data.get("default_profile")
    if default is not None and default not in profiles:
        raise StudyError(f"{source}: default_profile {default!r} is not one of its profiles. {suggest(str(default), profiles)}")
    return Study(
        name=data["name"], measure=data["measure"], description=str(data.get("description", "")),
        grid=_check_grid(_expect_table(data.get("grid", {}), f"{source}: grid"), "grid"),
        settings=_expect_table(data.get("settings", {}), f"{source}: settings"),
        exclude=exclude, profiles=profiles, source=source, default_profile=default, when=data.get("when", []),
        ladder=data.get("ladder"),
    )


def _check_ladder(table: Any, where: str) -> None:
    _check_keys(_expect_table(table, where), LADDER_KEYS, where)
    if not isinstance(table.get("axis"), str) or not isinstance(table.get("over", "seed"), str):
        raise StudyError(f"{where}: axis (the setting walked from short to long, e.g. 'seq_len') and over (default 'seed') are setting names.")
    stop = table.get("stop_after")
    if not isinstance(stop, int) or isinstance(stop, bool) or stop < 0:
        raise StudyError(f"{where}: stop_after must be a whole number >= 0 (values in a row at which every point failed; 0: off), got {stop!r}.")


# --- typing of values: from the measure's config dataclass ---

def _allowed_types(tp: Any) -> tuple[type, ...]:
    if isinstance(tp, str):
        raise TypeError("config dataclasses must not use string annotations")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(tp) for t in _allowed_types(arg))
    if tp is type(None):
        return (type(None),)
    return (origin or tp,)


def field_types(config_cls: type) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: _allowed_types(hints[f.name]) for f in dataclasses.fields(config_cls)}


def item_types(config_cls: type) -> dict[str, type]:
    """For each tuple-valued setting (tuple[X, ...], or that or None), the type X of its items."""
    found = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        for arg in (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)):
            if typing.get_origin(arg) is tuple and typing.get_args(arg):
                found[name] = typing.get_args(arg)[0]
    return found


def _item(key: str, value: Any, item: type, where: str) -> Any:
    """One item of a tuple setting, of type `item` (strings from --set parsed)."""
    if item is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, bool):
        pass
    elif item is int and isinstance(value, int):
        _fits_a_table(key, value, where)
        return value
    elif item is float and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    elif isinstance(value, str):
        try:
            parsed = item(value.strip())
            if item is float and not math.isfinite(parsed):
                raise ValueError
            return parsed
        except ValueError:
            pass
    raise StudyError(f"{where}: {key} takes a list of {item.__name__} values; {value!r} is not one.")


def coerce(key: str, value: Any, allowed: tuple[type, ...], where: str, item: type | None = None) -> Any:
    """A value of an allowed type (ints widen to floats; strings from --set are parsed; a float must be
    finite; a tuple's items are of type `item`), or an error."""
    if tuple in allowed and item is not None:
        if isinstance(value, (list, tuple)):
            items = tuple(_item(key, v, item, where) for v in value)
            twice = sorted({repr(v) for v in items if items.count(v) > 1})
            if twice:
                raise StudyError(f"{where}: {key} lists {', '.join(twice)} more than once; give each value once.")
            return items
        if isinstance(value, str) and str not in allowed and value.strip().lower() not in ("none", "null"):
            return (_item(key, value, item, where),)  # one item of a tuple setting, e.g. prefixes=分开
    value = _coerce(key, value, allowed, where)
    if isinstance(value, float) and not math.isfinite(value):
        raise StudyError(f"{where}: {key}={value!r} is not a finite number; give a finite one.")
    _fits_a_table(key, value, where)
    return value


def _fits_a_table(key: str, value: Any, where: str) -> None:
    """Every setting is a column of the run's tables: a whole number must fit in 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise StudyError(f"{where}: {key}={value} is too large a number (a setting is stored in the run's tables as a 64-bit integer: "
                         "at most 2**63 - 1 in size).")


def _coerce(key: str, value: Any, allowed: tuple[type, ...], where: str) -> Any:
    names = "/".join("none" if t is type(None) else t.__name__ for t in allowed)
    if isinstance(value, str) and type(None) in allowed and value.strip().lower() in ("none", "null"):
        return None
    if isinstance(value, str) and tuple in allowed and str not in allowed:
        return (value,)  # one item of a tuple setting, e.g. prefixes=分开
    if isinstance(value, str) and str not in allowed:
        text = value.strip().lower()
        for t in (bool, int, float):
            if t in allowed:
                try:
                    if t is bool:
                        if text in ("true", "false"):
                            return text == "true"
                        continue
                    return t(value)
                except ValueError:
                    continue
        raise StudyError(f"{where}: {key}={value!r} is not a valid {names} value.")
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, list) and (tuple in allowed or list in allowed):
        return tuple(value)
    raise StudyError(f"{where}: {key}={value!r} is not a valid {names} value.")


def parse_override(text: str) -> tuple[str, list]:
    """'KEY=V1,V2' -> ('KEY', ['V1', 'V2']); 'KEY=[1, 2]' is one list value (a TOML array), for list settings."""
    if "=" not in text:
        raise StudyError(f"--set {text!r} must read KEY=VALUE or KEY=V1,V2,...")
    key, _, raw = text.partition("=")
    if raw.strip().startswith("["):
        try:
            return key.strip(), [tomllib.loads(f"v = {raw.strip()}")["v"]]
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"--set {text!r}: {raw.strip()!r} is not a TOML array like [0, 100, 1000] ({exc}).") from None
    values = [v.strip() for v in raw.split(",")]
    if not key.strip() or any(v == "" for v in values):
        raise StudyError(f"--set {text!r} must read KEY=VALUE or KEY=V1,V2,... with no empty value.")
    return key.strip(), values


MAX_POINTS = 20_000  # a grid larger than this is a typo far more often than a plan (2 cores: weeks of work)


def resolve(study: Study, config_cls: type, profile: str | None = None, overrides: list[str] = ()) -> Resolved:
    """Defaults < study settings and grid < profile (the study's default_profile when none is named) <
    [[when]] settings, for the points their match selects < --set; every key checked against config_cls."""
    types_of = field_types(config_cls)
    items_of = item_types(config_cls)
    profile = profile if profile is not None else study.default_profile
    values: dict[str, list] = {}
    axes: list[str] = []
    exclude = list(study.exclude)
    whens = [(0, w) for w in study.when]  # (level, table): a profile's [[when]] (level 1) overrides the study's
    ladder = study.ladder

    def put(table: dict, where: str, is_grid: bool) -> None:
        for key, value in table.items():
            if key not in types_of:
                raise StudyError(f"{where}: unknown key {key!r} for measure {study.measure!r}. {suggest(key, types_of)}")
            vals = value if is_grid else [value]
            if where == "--set" and key in items_of and all(isinstance(v, str) for v in vals):
                vals = [tuple(vals)]  # KEY=A,B for a list setting is one list, not a grid of two (a grid: KEY=[A, B] per run)
            coerced = [coerce(key, v, types_of[key], where, items_of.get(key)) for v in vals]
            seen = [repr(v) for v in coerced]
            twice = sorted({v for v in seen if seen.count(v) > 1})
            if twice:
                raise StudyError(f"{where}: {key} lists {', '.join(twice)} more than once; each grid value once.")
            values[key] = coerced
            if (is_grid or len(vals) > 1) and key not in axes:
                axes.append(key)

    put(study.settings, f"{study.source}: settings", False)
    put(study.grid, f"{study.source}: grid", True)
    if profile is not None:
        if profile not in study.profiles:
            raise StudyError(f"Study {study.name!r} has no profile {profile!r}. {suggest(profile, study.profiles)}")
        prof = study.profiles[profile]
        put(prof.get("settings", {}), f"profile {profile!r} settings", False)
        put(prof.get("grid", {}), f"profile {profile!r} grid", True)
        exclude += prof.get("exclude", [])
        whens += [(1, w) for w in prof.get("when", [])]
        ladder = prof.get("ladder", ladder)  # a profile's own ladder replaces the study's
    overridden = []
    for text in overrides:
        key, raw = parse_override(text)
        put({key: raw}, "--set", True)
        overridden.append(key)
    def rule(match: dict, because: str, where: str) -> Rule:
        for key in match:
            if key not in types_of:
                raise StudyError(f"{study.source}: {where} names unknown key {key!r}. {suggest(key, types_of)}")
        return Rule({k: [coerce(k, v, types_of[k], where, items_of.get(k)) for v in (vals if isinstance(vals, list) else [vals])]
                     for k, vals in match.items()}, str(because))

    rules = [rule({k: v for k, v in r.items() if k != BECAUSE}, r.get(BECAUSE, ""), "exclude") for r in exclude]
    conditional = []
    for level, w in whens:
        settings = {}
        for key, value in w["settings"].items():
            if key not in types_of:
                raise StudyError(f"{study.source}: when.settings: unknown key {key!r} for measure {study.measure!r}. {suggest(key, types_of)}")
            if key not in overridden:  # --set has the last word
                settings[key] = coerce(key, value, types_of[key], "when.settings", items_of.get(key))
        conditional.append((rule(w["match"], w.get("because", ""), "when.match"), settings, level))
    if ladder is not None:
        for key in (ladder["axis"], ladder.get("over", "seed")):
            if key not in types_of:
                raise StudyError(f"{study.source}: ladder names unknown key {key!r} for measure {study.measure!r}. {suggest(key, types_of)}")
        if ladder["axis"] not in axes:
            raise StudyError(f"{study.source}: the ladder walks {ladder['axis']!r}, which is not an axis of the grid"
                             f"{f' (profile {profile!r})' if profile else ''}: it is fixed at "
                             f"{repr(values[ladder['axis']][0]) if ladder['axis'] in values else 'its default'}. "
                             f"Give {ladder['axis']} several values in the grid (or with --set), or remove the [ladder] table.")
        walked = values[ladder["axis"]]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in walked):
            raise StudyError(f"{study.source}: the ladder walks {ladder['axis']!r} from its smallest value up, so its values must be numbers "
                             f"(a lag, a length), got {walked!r}. Walk a numeric axis (e.g. seq_len), or remove the [ladder] table.")
        over = ladder.get("over", "seed")
        if over == ladder["axis"] or (over not in axes and over != "seed"):
            raise StudyError(f"{study.source}: the ladder's 'over' ({over!r}) names the points that must all fail at a value before the "
                             f"ladder stops; it must be an axis of the grid other than {ladder['axis']!r} (axes: {', '.join(axes)}), or seed.")
        ladder = Ladder(ladder["axis"], ladder["stop_after"], ladder.get("over", "seed"))
    return Resolved(study, profile or "default", values, axes, rules, overridden, conditional, ladder)


def expand(resolved: Resolved, config_cls: type) -> tuple[list, list[Dropped]]:
    """Every grid point as a config_cls instance in grid order, and what each exclusion rule dropped
    (a point is charged to the first rule it matches)."""
    keys = list(resolved.values)
    total = math.prod(len(resolved.values[k]) for k in keys)
    if total > MAX_POINTS:
        sizes = " x ".join(f"{len(resolved.values[k])} {k}" for k in resolved.axes if len(resolved.values[k]) > 1)
        raise StudyError(f"study {resolved.study.name!r} ({resolved.profile}) would have {total:,} points ({sizes}), more than "
                         f"{MAX_POINTS:,}: give fewer values, or split it into several runs.")
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls) if f.default is not dataclasses.MISSING}
    points: list = []
    dropped: dict[int, Dropped] = {}
    for combo in itertools.product(*(resolved.values[k] for k in keys)):
        point = dict(zip(keys, combo))
        point |= _when_settings(resolved, defaults | point)  # before the exclusions: a rule sees the point as it would run
        full = defaults | point  # a rule may name a setting left at its default
        rule_index = next((i for i, rule in enumerate(resolved.exclude) if rule.matches(full)), None)
        if rule_index is None:
            points.append(config_cls(**point))
            continue
        rule = resolved.exclude[rule_index]
        d = dropped.setdefault(rule_index, Dropped(rule, 0, []))
        d.count += 1
        combo = {k: full.get(k) for k in rule.match}
        if combo not in d.combos:
            d.combos.append(combo)
    return points, [dropped[i] for i in sorted(dropped)]


def _when_settings(resolved: Resolved, full: dict) -> dict:
    """The settings the [[when]] tables that match a point give it (an axis the grid varies is left as it is;
    a profile's table overrides the study's); two of one level that match and set one key to different values
    are an error naming both."""
    chosen: dict[str, tuple[Rule, Any, int]] = {}
    for match, settings, level in resolved.when:
        if not match.matches(full):
            continue
        for key, value in settings.items():
            if len(resolved.values.get(key, ())) >= 2 or (key in chosen and chosen[key][2] > level):
                continue
            if key in chosen and chosen[key][2] == level and chosen[key][1] != value:
                first, set_first, _ = chosen[key]
                raise StudyError(f"{resolved.study.source}: two [[when]] tables set {key} differently for the same points: when {first} "
                                 f"sets {key} = {set_first!r}, when {match} sets {key} = {value!r} (e.g. the point "
                                 f"{ {a: full.get(a) for a in resolved.axes} }). Make their matches exclusive, or set {key} in one of them.")
            chosen[key] = (match, value, level)
    return {k: v for k, (_, v, _) in chosen.items()}

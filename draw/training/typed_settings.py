"""Typed settings classes (draw/training/settings.py): each field declared once,

    n_iter: int = setting(10, "number of glimpses T", flag="--niter")

gives its argparse flag and help (`parser`), its config-file keys, its name in messages, its
type check and what a resumed run may change (`on_resume`). The model's sizes are checked by
its config, in errors that name the flag (`config_error`).

Later sources override earlier ones: the field defaults < a config file (--config FILE) < the
flags. On --resume the run's stored settings replace the defaults, and flags may only repeat
them, except the CHANGE ones (e.g. --epochs) and the SESSION ones, which are not stored.

A config file is TOML or JSON, one flat table; a key is a field name or a flag spelling
without dashes (`n_iter`, `niter`, `enc-dim`), a value has the field's type, and relative paths
are relative to the working directory (configs/*.toml are examples). An unknown key, a wrong
type or a bad value is a one-line error naming the file.
"""
import argparse
import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path

from draw.cli import ArgumentParser
from draw.errors import DrawError
from draw.model import ConfigError

KEEP = "keep"        # stored with the run; a resumed run keeps it (a flag may only repeat it)
CHANGE = "change"    # stored with the run; a resumed run may change it (e.g. --epochs)
FRESH = "fresh"      # stored; only for a fresh run (giving it with --resume is an error)
SESSION = "session"  # not stored: where and how this process runs (device, directories)


def setting(default, help: str, flag: str | None = None, aliases: tuple[str, ...] = (),
            on_resume: str = KEEP, metavar: str | None = None, absent=None):
    """A dataclass field of a settings class; `flag` defaults to --field-name. `absent`: the
    value that runs stored before the field existed had, where it is not its default."""
    return field(default=default, metadata={"help": help, "flag": flag, "aliases": aliases,
                                            "on_resume": on_resume, "metavar": metavar,
                                            "absent": default if absent is None else absent})


class Settings:
    """Subclass with `@dataclass(frozen=True)`, declare fields with `setting(...)`, extend
    `check`, name the `script` that reads them."""

    script = "this script"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for name in self._fields():
            self._check_type(name, getattr(self, name), hints[name])
        self.check()

    def check(self) -> None:
        """Raise DrawError on a bad value; subclasses extend it."""

    def require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            raise DrawError(f"{self.flag(name)} must be {what}, got {getattr(self, name)!r}")

    def config_error(self, e: ConfigError, source: dict[str, str] | None = None) -> DrawError:
        """The model config's error `e` about the flag of e.field, or of `source[e.field]`
        (read_N comes from --attention)."""
        name = (source or {}).get(e.field, e.field)
        value = "" if name == e.field else f" {getattr(self, name)}: {e.field}"
        return DrawError(f"{self.flag(name)}{value} {e.problem}")

    @classmethod
    def flag(cls, name: str) -> str:
        """How field `name` is spelled on the command line, e.g. batch_size -> --bs."""
        f = cls._fields()[name]
        return f.metadata["flag"] or "--" + f.name.replace("_", "-")

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if f.init}

    @classmethod
    def _check_type(cls, name: str, value, hint) -> None:
        """DrawError unless `value` has the field's type, X or X | None; an int is a valid float."""
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kind = allowed[0]
        # a bool is an int to isinstance, but neither an integer nor a number here
        right = (isinstance(value, (int, float) if kind is float else kind)
                 and (kind is bool) == isinstance(value, bool))
        if not right and not (value is None and type(None) in allowed):
            names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
            raise DrawError(f"{cls.flag(name)} must be {names[kind]}, got {value!r}")

    def stored(self) -> dict:
        """The settings a run keeps with its checkpoint (all but the SESSION ones)."""
        return {name: getattr(self, name) for name, f in self._fields().items()
                if f.metadata["on_resume"] != SESSION}

    # --- where settings come from ---------------------------------------------------------

    @classmethod
    def given(cls, flags: dict) -> dict:
        """A config file's settings (flags["config"]) overridden by the flags, by field name;
        None means not given."""
        flags = {key: value for key, value in flags.items() if value is not None}
        config = flags.pop("config", None)
        unknown = sorted(set(flags) - set(cls._fields()))
        if unknown:
            raise DrawError(f"unknown settings {unknown}; known: {sorted(cls._fields())}")
        given = {**(cls.read_config(config) if config is not None else {}), **flags}
        return {k: cls._as_field_type(k, v) for k, v in given.items()}

    @classmethod
    def read_config(cls, path: str) -> dict:
        """A TOML or JSON file of settings, as field names and values (the module docstring)."""
        suffix = Path(path).suffix.lower()
        if suffix not in (".toml", ".json"):
            raise DrawError(f"--config {path}: expected a .toml or .json file")
        try:
            text = Path(path).read_text(encoding="utf-8")
            table = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
        except OSError as e:
            raise DrawError(f"--config {path}: {e.strerror or e}") from e
        except (ValueError, UnicodeDecodeError) as e:   # TOMLDecodeError and JSONDecodeError too
            raise DrawError(f"--config {path} is not valid {suffix[1:].upper()}: "
                            f"{str(e).splitlines()[0]}") from e
        if not isinstance(table, dict):
            raise DrawError(f"--config {path}: expected a table of settings, got "
                            f"{type(table).__name__}")
        keys, hints = cls._config_keys(), typing.get_type_hints(cls)
        out = {}
        for key, value in table.items():
            if key not in keys:
                raise DrawError(f"--config {path}: unknown setting {key!r}; known: "
                                f"{', '.join(sorted(cls._fields()))}")
            if keys[key] in out:
                raise DrawError(f"--config {path}: {key!r} sets {keys[key]} a second time")
            out[keys[key]] = cls._as_field_type(keys[key], value)
            try:
                cls._check_type(keys[key], out[keys[key]], hints[keys[key]])
            except DrawError as e:
                raise DrawError(f"--config {path}: {e}") from e
        return out

    @classmethod
    def _as_field_type(cls, name: str, value):
        """A config file's `lr = 1` is --lr 1, a float."""
        return float(value) if typing.get_type_hints(cls)[name] is float and \
            type(value) is int else value

    @classmethod
    def _config_keys(cls) -> dict[str, str]:
        """Every accepted config key (field names, flag spellings without dashes) -> field."""
        keys = {}
        for name, f in cls._fields().items():
            for spelling in (name, cls.flag(name), *f.metadata["aliases"]):
                bare = spelling.lstrip("-")
                keys[bare] = keys[bare.replace("-", "_")] = keys[bare.replace("_", "-")] = name
        return keys

    @classmethod
    def resumed(cls, stored: dict, given: dict, where: str):
        """The settings of a run continued from its `stored` ones; settings added since take
        the value such runs had (`setting`'s `absent`), and `given` (flags, config file) may
        only repeat the KEEP ones."""
        fields = cls._fields()
        unknown = sorted(set(stored) - set(fields))
        if unknown:
            raise DrawError(f"--resume: {where} has settings that {cls.script} (this version) "
                            f"does not know: {unknown}; a run of another script, or of a "
                            f"newer version")
        # SESSION settings an older version stored (compile, say) are this session's to choose
        stored = {name: stored.get(name, f.metadata["absent"]) for name, f in fields.items()
                  if f.metadata["on_resume"] != SESSION}
        for name, value in given.items():
            rule = fields[name].metadata["on_resume"]
            if rule == FRESH:
                raise DrawError(f"--resume and {cls.flag(name)} cannot be combined: a resumed "
                                f"run continues from its own state")
            if rule == KEEP and value != stored[name]:
                raise DrawError(f"--resume keeps the run's settings: {cls.flag(name)} is "
                                f"{stored[name]!r} there, not {value!r} (leave the flag out)")
        return cls(**{**stored, **given})

    # --- the command line ------------------------------------------------------------------

    @classmethod
    def parser(cls, description: str) -> argparse.ArgumentParser:
        """An argparse parser with one flag per field, plus --config; flags not given are
        absent from the namespace, so `given` can tell them from a config file's values."""
        parser = ArgumentParser(description=description, argument_default=argparse.SUPPRESS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config", metavar="FILE",
                            help="a TOML or JSON file of settings (keys as the flags'); flags "
                                 "given here override it")
        hints = typing.get_type_hints(cls)
        for name, f in cls._fields().items():
            hint = hints[name]
            kind = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
            text = f.metadata["help"]
            if f.default is not None and "default:" not in text:
                text += f" (default: {f.default})" if kind is not bool else \
                    f" (default: {'on' if f.default else 'off'})"
            text += {KEEP: "; kept by --resume", FRESH: "; not with --resume"}.get(
                f.metadata["on_resume"], "")
            spellings = (cls.flag(name), *f.metadata["aliases"])
            if kind is bool:
                parser.add_argument(*spellings, dest=name, help=text,
                                    action=argparse.BooleanOptionalAction)
            else:
                parser.add_argument(*spellings, dest=name, type=kind, help=text,
                                    metavar=f.metadata["metavar"])
        return parser


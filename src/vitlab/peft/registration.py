"""Registering vitlab's tuners with HF peft, so that ``get_peft_model``, ``PeftModel.from_pretrained`` and
``PeftConfig.from_pretrained`` know them.

peft's own ``peft.utils.register_peft_method`` only accepts names of its closed ``PeftType`` enum. What it does is fill
the ``peft.mapping`` tables (config class, tuner class and parameter prefix by peft type); peft supports a plain string
as ``peft_type`` (peft issue #2634 / PR #2635), so vitlab fills the same tables under the strings ``"KADAPTATION"`` and
``"LORA_QV"``. This runs when ``vitlab.peft`` is imported.

Example:
    >>> from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    >>> import vitlab.peft
    >>> PEFT_TYPE_TO_CONFIG_MAPPING["KADAPTATION"].__name__
    'KAdaptationConfig'
"""

from __future__ import annotations

__all__ = ["PeftTypeName", "register_with_peft"]


class PeftTypeName(str):
    """A ``peft_type`` outside peft's closed ``PeftType`` enum that reads like one of its members: ``str()`` gives
    ``"PeftType.KADAPTATION"`` and ``.value`` the bare name, as peft expects of a ``PeftType`` (its
    ``get_model_status().peft_types`` is ``str(peft_type).partition(".")[-1]``, empty for a plain string). It is
    still a ``str`` equal to (and hashing like) the bare name: peft's tables and ``adapter_config.json`` hold that.

    Example:
        >>> name = PeftTypeName("KADAPTATION")
        >>> name == "KADAPTATION", str(name), name.value, name
        (True, 'PeftType.KADAPTATION', 'KADAPTATION', 'KADAPTATION')
    """

    @property
    def value(self) -> str:
        """The bare name, as ``PeftType.LORA.value == "LORA"``."""
        return str.__str__(self)

    def __str__(self) -> str:
        return f"PeftType.{self.value}"


def register_with_peft(peft_type: str, config_cls: type, model_cls: type) -> None:
    """Make ``peft_type`` (an upper-case string, stored as ``adapter_config.json``'s ``peft_type``) known to peft.

    Idempotent for the same classes; raises when another method already uses the type or the tuner's ``prefix``.

    Args:
        peft_type: e.g. ``"KADAPTATION"``; ``config_cls().peft_type`` must equal it.
        config_cls: a ``peft.PeftConfig`` dataclass.
        model_cls: a ``peft.tuners.tuners_utils.BaseTuner`` subclass with a unique ``prefix`` (e.g. ``"kadaptation_"``).
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    if not peft_type or peft_type != peft_type.upper():
        raise ValueError(f"peft_type must be a non-empty upper-case string, got {peft_type!r}")
    prefix = getattr(model_cls, "prefix", None)
    if not prefix:
        raise ValueError(f"{model_cls.__name__} needs a class attribute `prefix` (e.g. 'kadaptation_')")
    current = (PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type), PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type))
    if current == (config_cls, model_cls):
        return
    if any(current):
        raise ValueError(f"peft already has a method of type {peft_type!r} ({current}); choose another peft_type")
    if prefix in PEFT_TYPE_TO_PREFIX_MAPPING.values():
        raise ValueError(f"the parameter prefix {prefix!r} is already used by another peft method")
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix

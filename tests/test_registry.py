import pytest

from recast_mcore.utils.registry import Registry


def test_registry_rejects_duplicates_and_lists_valid_names():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    reg.register("a")(lambda: "a")
    assert reg.get("b") is b and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: "again")
    with pytest.raises(KeyError, match="unknown widget 'c'; valid: a, b"):
        reg.get("c")


def test_registry_unknown_error_type_is_configurable():
    with pytest.raises(ValueError, match="unknown engine 'x'; valid: "):
        Registry("engine", unknown_error=ValueError).get("x")

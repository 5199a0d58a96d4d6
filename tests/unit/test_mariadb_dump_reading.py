"""What the MariaDB restore reads in a dump before it loads it: a trigger, routine or
event that names the dump's own database (loaded beside the live one, it would act on
the live one)."""

from __future__ import annotations

from pullback.plugins.mariadb import self_reference

DUMP = """\
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `inv`;
USE `inv`;
INSERT INTO `items` VALUES
(1,'see inv.items and `inv`.x inside the data');
DELIMITER ;;
/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER {trigger}
*/;;
DELIMITER ;
/*!50001 VIEW `v` AS select `items`.`id` AS `id` from `items` */;
"""


def dump(tmp_path, trigger: str, name: str = "inv.sql"):
    path = tmp_path / name
    path.write_text(DUMP.format(trigger=trigger))
    return path


def test_a_trigger_naming_its_database_is_found_on_its_line(tmp_path):
    found = "trg AFTER INSERT ON inv.items FOR EACH ROW SET @a = 1"
    assert self_reference(dump(tmp_path, found), "inv") == 6
    quoted = "trg AFTER INSERT ON `items` FOR EACH ROW INSERT INTO `inv` . `log` VALUES (1)"
    assert self_reference(dump(tmp_path, quoted), "inv") == 6


def test_data_views_and_other_databases_are_not_taken_for_it(tmp_path):
    # the INSERT's text and the view lie outside DELIMITER blocks; myinv. and x.inv. are
    # other names
    other = "trg AFTER INSERT ON items FOR EACH ROW INSERT INTO myinv.log SELECT x.inv.a"
    assert self_reference(dump(tmp_path, other), "inv") is None
    assert self_reference(dump(tmp_path, "trg AFTER INSERT ON items"), "inv") is None


def test_a_name_that_needs_quotes_is_only_found_quoted(tmp_path):
    trigger = "trg AFTER INSERT ON `my-db`.`items` FOR EACH ROW SET @a = 'my-db.items'"
    assert self_reference(dump(tmp_path, trigger), "my-db") == 6
    assert self_reference(dump(tmp_path, "trg ON items SET @a = 'my-db.items'"), "my-db") is None


def test_a_name_split_over_lines_hidden_or_in_a_view_is_found(tmp_path):
    """Outside attacks: ```inv``` and ``.`audit``` on two lines passed and the restored
    trigger wrote into the live table; a view calling ``inv.f()`` read the live one; a
    reader of strings was fooled by a comment holding an apostrophe, by ANSI_QUOTES'
    ``"inv".audit`` and by NO_BACKSLASH_ESCAPES, and an event wrote into the live table
    every second. The text is searched as it is: a name in a string counts too."""
    split = "trg AFTER INSERT ON items FOR EACH ROW INSERT INTO `inv`\n  .`audit` VALUES (1)"
    assert self_reference(dump(tmp_path, split), "inv") == 6  # where the name starts
    for hidden in (
        "trg AFTER INSERT ON items FOR EACH ROW BEGIN\n# don't\nINSERT INTO inv.a VALUES (1);\n"
        "# won't\nEND",
        'trg AFTER INSERT ON items FOR EACH ROW INSERT INTO "inv".audit VALUES (NEW.id)',
        "trg AFTER INSERT ON items FOR EACH ROW BEGIN SET @a='x\\'; INSERT INTO inv.a VALUES "
        "(1); SET @b=''; END",
        "trg AFTER INSERT ON items FOR EACH ROW INSERT INTO inv/**/.audit VALUES (1)",
        "trg AFTER INSERT ON items FOR EACH ROW SET @a = 'see inv. 5'",  # refused: by hand
    ):
        assert self_reference(dump(tmp_path, hidden), "inv") is not None, hidden
    view = tmp_path / "view.sql"
    view.write_text(
        "/*!50001 VIEW `v` AS select `inv`.`f`(`orders`.`id`) AS `x` from `orders` */;\n"
    )
    assert self_reference(view, "inv") == 1
    plain_view = tmp_path / "plain.sql"
    plain_view.write_text("/*!50001 VIEW `v` AS select `orders`.`id` AS `id` from `orders` */;\n")
    assert self_reference(plain_view, "inv") is None

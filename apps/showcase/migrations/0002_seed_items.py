from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

# Frozen here on purpose (a migration must not follow later code changes); Item.SEED_ROWS
# repeats it for the views.
SEED_ROWS = 100


def seed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Create the seeded items, ids 1 to SEED_ROWS on a fresh table."""
    item = apps.get_model("showcase", "Item")
    db = schema_editor.connection.alias
    item.objects.using(db).bulk_create(
        item(name=f"item-{number:03d}", value=number * number) for number in range(1, SEED_ROWS + 1)
    )


def unseed(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    """Delete the seeded items."""
    item = apps.get_model("showcase", "Item")
    names = [f"item-{number:03d}" for number in range(1, SEED_ROWS + 1)]
    item.objects.using(schema_editor.connection.alias).filter(name__in=names).delete()


class Migration(migrations.Migration):
    dependencies = [("showcase", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]

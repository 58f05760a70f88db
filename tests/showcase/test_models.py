"""The Item model and its seed data."""

from __future__ import annotations

from django.test import TestCase

from apps.showcase.models import Item


class SeedTests(TestCase):
    def test_seed_rows(self):
        self.assertEqual(Item.objects.count(), Item.SEED_ROWS)
        self.assertEqual(
            list(Item.objects.order_by("pk").values_list("pk", "name", "value")[:3]),
            [(1, "item-001", 1), (2, "item-002", 4), (3, "item-003", 9)],
        )
        self.assertEqual(Item.objects.get(pk=Item.SEED_ROWS).name, "item-100")

    def test_created_is_set(self):
        self.assertFalse(Item.objects.filter(created__isnull=True).exists())

    def test_str(self):
        self.assertEqual(str(Item(name="widget")), "widget")

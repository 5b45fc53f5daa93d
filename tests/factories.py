"""factory-boy factories. Memberships go through the service, like every other write."""

from __future__ import annotations

import factory

from apps.orgs import services
from apps.orgs.models import Membership, Org, User

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    is_staff = True
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def saved(self, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            self.save()


class OrgFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Org
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"org{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


def member(org: Org, role: str, username: str | None = None) -> User:
    user = UserFactory(username=username) if username else UserFactory()
    services.membership_add(org=org, user=user, role=role, actor=None)
    return user


__all__ = ["PASSWORD", "Membership", "OrgFactory", "UserFactory", "member"]

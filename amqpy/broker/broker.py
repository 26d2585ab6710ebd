"""The broker root: virtual hosts and users."""

from __future__ import annotations

import hmac

import attrs

from amqpy.broker.vhost import VHost


@attrs.frozen
class User:
    name: str
    password: str
    tags: tuple[str, ...] = ()


class Broker:
    def __init__(self) -> None:
        self.vhosts: dict[str, VHost] = {}
        self.users: dict[str, User] = {}

    def add_vhost(self, name: str) -> VHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VHost(name)
        return vhost

    def add_user(self, name: str, password: str, tags: tuple[str, ...] = ()) -> User:
        user = self.users[name] = User(name, password, tags)
        return user

    def authenticate(self, username: str, password: str) -> User | None:
        user = self.users.get(username)
        if user is None:
            return None
        if not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user

"""Campaigns and lead lists named the way people name them (docs/cli.md, "IDs").

Every command that takes a campaign accepts it as the positional ``CAMPAIGN`` or as ``--campaign`` (the
same thing; :func:`unify_campaign_args` adds the missing form to every command once the parser is built),
and as a full ID, a unique prefix of one (case-insensitive), or the campaign's exact name. Lead lists take a
full ID or a unique prefix. A value that matches several is refused (exit 3, ``ambiguous_id``) with the
candidates; a value that matches none is passed on unchanged, so the service's own ``NOT_FOUND`` answers.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

import grpc

from outdial.cli.base import EXIT_NOT_FOUND, BadInput, CliError, channel
from outdial.core.config import Settings
from outdial.v1 import campaign_pb2, campaign_pb2_grpc

#: What the services mint (``uuid4().hex``): such a value is taken as it is, without a lookup.
FULL_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,32}$")
#: Pages of ListCampaigns read to find a campaign by prefix or name (1,000 campaigns a page).
_MAX_PAGES = 20
#: Defaults set on a parser by :func:`unify_campaign_args`: what to merge after parsing.
_MERGES = "_campaign_merges"
#: The argument destinations that hold IDs, per parser (set by :func:`unify_campaign_args`).
_KINDS = "_id_kinds"


@dataclass(frozen=True)
class _Merge:
    dest: str  # where the handler reads the campaign(s)
    other: str  # the other form's destination
    required: bool
    many: bool


def unify_campaign_args(parser: argparse.ArgumentParser) -> None:
    """Give every command that takes a campaign both forms, ``CAMPAIGN`` and ``--campaign``, and mark the
    arguments that hold campaign and lead-list IDs for :func:`resolve_ids`. Walks the whole parser tree."""
    for path, leaf in _leaves(parser, ()):
        kinds: dict[str, str] = {}
        merges: list[_Merge] = []
        positionals = [a for a in leaf._actions if not a.option_strings]
        opt = next((a for a in leaf._actions if "--campaign" in a.option_strings), None)
        pos = next(
            (
                a
                for a in positionals
                if a.dest == "campaign" or (a.dest == "id" and path[:1] == ("campaign",))
            ),
            None,
        )
        if opt is not None and pos is None:
            many = isinstance(opt, argparse._AppendAction)
            kinds[opt.dest] = "campaign"
            # A positional is added only where it cannot be confused with another one: where the command has
            # none (`pacing state CAMPAIGN`), or after a lead file (`leads upload FILE CAMPAIGN`). Elsewhere
            # (`dnc check NUMBER --campaign C`) the campaign qualifies the subject and stays an option.
            if (not positionals or path[:1] == ("leads",)) and not any(
                a.nargs in ("*", "+", argparse.REMAINDER) for a in positionals
            ):
                leaf.add_argument(
                    "campaign_arg",
                    nargs="*" if many else "?",
                    metavar="CAMPAIGN",
                    help="the campaign: ID, unique ID prefix or name (or --campaign)",
                )
                merges.append(_Merge(opt.dest, "campaign_arg", bool(opt.required), many))
                opt.required = False
        elif pos is not None and opt is None:
            kinds[pos.dest] = "campaign"
            if positionals == [pos]:
                leaf.add_argument(
                    "--campaign",
                    dest="campaign_opt",
                    metavar="CAMPAIGN",
                    help=f"the same as {pos.metavar or pos.dest.upper()}",
                )
                merges.append(_Merge(pos.dest, "campaign_opt", pos.nargs is None, False))
                pos.nargs = "?"
                pos.metavar = pos.metavar or "CAMPAIGN"
                pos.help = (pos.help or "the campaign") + ": ID, unique ID prefix or name (or --campaign)"
        elif opt is not None:
            kinds[opt.dest] = "campaign"
        if path[:1] == ("leads",):
            for a in leaf._actions:
                if a.dest in ("list", "lead_list"):
                    kinds[a.dest] = "lead_list"
        leaf.set_defaults(**{_MERGES: merges, _KINDS: kinds})


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = []
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    seen: set[int] = set()
    for action in subs:
        for name, child in action.choices.items():
            if id(child) not in seen:
                seen.add(id(child))
                out += _leaves(child, (*path, name))
    return out


def merge_campaign_args(args: argparse.Namespace) -> None:
    """Fold ``CAMPAIGN`` and ``--campaign`` into the one destination the handler reads."""
    for m in getattr(args, _MERGES, ()):
        mine, other = getattr(args, m.dest, None), getattr(args, m.other, None)
        if m.many:
            values = list(dict.fromkeys([*(mine or []), *(other or [])]))
            setattr(args, m.dest, values or None)
        elif mine and other and mine != other:
            raise BadInput(f"two campaigns given ({mine!r} and {other!r}): give one", field="campaign")
        else:
            setattr(args, m.dest, mine or other)
        if m.required and not getattr(args, m.dest):
            raise BadInput(
                "the campaign is required: give its ID (or a unique prefix, or its name) as CAMPAIGN or "
                "--campaign",
                field="campaign",
            )


async def resolve_ids(args: argparse.Namespace, settings: Settings) -> None:
    """Replace every campaign or lead-list value that is not a full ID by the one ID it names."""
    kinds: dict[str, str] = getattr(args, _KINDS, {})
    if not kinds:
        return
    resolver = _Resolver(args, settings)
    for dest, kind in kinds.items():
        value = getattr(args, dest, None)
        if isinstance(value, list):
            setattr(args, dest, [await resolver.one(kind, v, dest) for v in value])
        elif isinstance(value, str) and value:
            setattr(args, dest, await resolver.one(kind, value, dest))


class _Resolver:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.campaigns: list[campaign_pb2.Campaign] | None = None

    async def one(self, kind: str, value: str, dest: str) -> str:
        if FULL_ID.match(value):
            return value
        try:
            matches = await (self._campaigns(value) if kind == "campaign" else self._lists(value))
        except grpc.aio.AioRpcError:
            # Not allowed to list (an agent's token), or the service is away: the command's own call says so.
            return value
        if len(matches) == 1:
            return matches[0][0]
        if len(matches) > 1:
            shown = ", ".join(f"{i} ({label})" for i, label in matches[:5])
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            what = "campaigns" if kind == "campaign" else "lead lists"
            raise CliError(
                f"{value!r} names {len(matches)} {what}: {shown}{more}; give more of the ID",
                EXIT_NOT_FOUND,
                "ambiguous_id",
                "campaign" if kind == "campaign" else dest,
            )
        return value

    async def _campaigns(self, value: str) -> list[tuple[str, str]]:
        if self.campaigns is None:
            self.campaigns = []
            async with channel(self.args, self.settings, "campaign") as ch:
                stub = campaign_pb2_grpc.CampaignServiceStub(ch)
                token = ""
                for _ in range(_MAX_PAGES):
                    resp = await stub.ListCampaigns(
                        campaign_pb2.ListCampaignsRequest(page_size=1000, page_token=token), timeout=10
                    )
                    self.campaigns += resp.campaigns
                    token = resp.next_page_token
                    if not token:
                        break
        low = value.lower()
        found: dict[str, str] = {}
        for c in self.campaigns:
            if c.name == value or (_HEX.match(value) and c.id.startswith(low)):
                found[c.id] = c.name
        return list(found.items())

    async def _lists(self, value: str) -> list[tuple[str, str]]:
        if not _HEX.match(value):
            return []
        async with channel(self.args, self.settings, "campaign") as ch:
            stub = campaign_pb2_grpc.CampaignServiceStub(ch)
            resp = await stub.ListLeadLists(
                campaign_pb2.ListLeadListsRequest(id_prefix=value.lower()), timeout=10
            )
        return [(x.id, x.file_name) for x in resp.lists]


def id_kinds(args: Any) -> dict[str, str]:
    """The ID-holding destinations of the parsed command (for tests and docs)."""
    return dict(getattr(args, _KINDS, {}))

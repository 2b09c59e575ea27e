"""Who the message says is calling, and where to call back: what a campaign must have before it dials, and
what a person hears after pressing the opt-out key. Pure; no I/O.

The message's wording is the rules table's (``message_content`` rows, filled by
:func:`outdial.rules.law.abandon_message` and ``agentless_message``); this module checks its two inputs, so
that the wording never has to invent them.

Sources:
- US: 47 CFR 64.1200(a)(7)(i)(A): on an abandoned call, a prerecorded message "limited to disclosing that the
  call was for 'telemarketing purposes'", the name of the business on whose behalf the call was placed, and
  a telephone number for making a do-not-call request, with an automated interactive opt-out
  (64.1200(b)(2), (b)(3)); 64.1200(b)(1): the name under which the entity is registered to conduct business
  with the State Corporation Commission (or comparable regulatory authority) must be stated; 64.1200(b)(2):
  the number "may not be a 900 number or any other number for which charges exceed local or long distance
  transmission charges". 16 CFR 310.4(b)(4)(iii) (FTC safe harbor) requires the same identity and number.
- UK: Ofcom, "Revised statement of policy on the persistent misuse of an electronic communications network
  or service" (2016), A1.54 (as outdial's law module numbers it): the information message names the company
  on whose behalf the call was made and gives a number to call that is free or charged at no more than a
  basic rate; no marketing content.
- CA: CRTC Unsolicited Telecommunications Rules, Part IV (ADAD) / Part II (Telemarketing) 13 and 14: the
  message identifies the person on whose behalf the call is made and a local or toll-free number at which
  that person can be reached. (To be verified against the current rules before relied on; applied here no
  more loosely than the US rule.)

Neither source prescribes an apology ("we are sorry no one was available"): outdial's message has none.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import PhoneNumberType

from outdial.rules import law
from outdial.rules.law import DEFAULT_JURISDICTION, JURISDICTION_REGION

__all__ = [
    "CALLBACK_NUMBER_TYPES",
    "callback_number_problem",
    "opt_out_confirmation",
    "seller_name_problem",
]

#: The kinds of number a person may be sent to call back: a geographic or mobile number, toll-free, a VoIP
#: or UK-wide (03) number, all charged at no more than a basic rate. Refused: premium-rate (64.1200(b)(2);
#: Ofcom "free or basic rate"), shared-cost (UK 084/087: charged above a basic rate), personal numbers
#: (UK 070: premium charges), pagers, voicemail-only access numbers, and numbers of unknown type.
CALLBACK_NUMBER_TYPES: frozenset[int] = frozenset(
    {
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.VOIP,
        PhoneNumberType.UAN,
    }
)

#: Longest seller name a message speaks (a legal name, not a paragraph).
MAX_SELLER_NAME = 200


def seller_name_problem(seller: str, campaign_name: str, *, same_on_purpose: bool = False) -> str:
    """Why ``seller`` cannot be the seller's legal name in the message, or "" when it can.

    The campaign's name is an internal label ("Spring solar push"): a seller name equal to it is refused as
    a placeholder unless the operator says it is the legal name on purpose (``same_on_purpose``)."""
    seller = seller.strip()
    if not seller:
        return "the seller's legal name is required (47 CFR 64.1200(b)(1); Ofcom A1.54)"
    if len(seller) > MAX_SELLER_NAME:
        return f"the seller's legal name is longer than {MAX_SELLER_NAME} characters"
    if not any(ch.isalpha() for ch in seller):
        return f"{seller!r} is not a name (no letters)"
    if seller.casefold() == campaign_name.strip().casefold() and not same_on_purpose:
        return (
            f"{seller!r} is the campaign's internal name; give the seller's legal name, or set "
            "seller_is_campaign_name when they are the same on purpose"
        )
    return ""


def callback_number_problem(number: str, jurisdiction: str | None) -> str:
    """Why ``number`` cannot be the message's callback number for a campaign of ``jurisdiction``, or "".

    It must be E.164, a valid number of the campaign's country (``is_valid_number_for_region``; NANP
    toll-free numbers are valid for the US and Canada alike), and of a type a person can call at no more than a basic rate
    (:data:`CALLBACK_NUMBER_TYPES`). It need not be the caller ID. Whether it is answered is not something
    a parser can know: the operator attests it by starting the campaign, and the start is audited."""
    number = number.strip()
    if not number:
        return "a callback number for do-not-call requests is required (47 CFR 64.1200(a)(7)(i)(A))"
    j = (jurisdiction or DEFAULT_JURISDICTION).upper()
    region = JURISDICTION_REGION.get(j)
    if region is None:
        return f"unknown jurisdiction {jurisdiction!r}"
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return f"{number!r} is not an E.164 number (+<country><number>)"
    if not number.startswith("+") or not phonenumbers.is_valid_number(parsed):
        return f"{number!r} is not a valid E.164 number"
    if not phonenumbers.is_valid_number_for_region(parsed, region):
        return f"{number!r} is not a number of {region}, the country of this {j} campaign"
    kind = phonenumbers.number_type(parsed)
    if kind not in CALLBACK_NUMBER_TYPES:
        label = {
            PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
            PhoneNumberType.SHARED_COST: "a shared-cost number (charged above a basic rate)",
            PhoneNumberType.PERSONAL_NUMBER: "a personal number (charged above a basic rate)",
        }.get(kind, "not a number a person can call at no more than a basic rate")
        return f"{number!r} is {label} (47 CFR 64.1200(b)(2); Ofcom: free or basic rate)"
    return ""


def opt_out_confirmation(jurisdiction: str | None = None) -> str:
    """What a person hears after pressing the opt-out key, before the line is hung up: that the request is
    taken, and nothing else (no marketing, no rest of the message). The request takes effect at once (the
    number is on the internal do-not-call list before the line is hung up, or the call's record carries it).
    The wording is the jurisdiction's ``opt_out_confirmation`` row of the rules table."""
    return law.opt_out_confirmation(jurisdiction)

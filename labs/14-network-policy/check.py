"""Lab 14's check: shop has a default deny and the allow-frontend policy, the frontend pod
carries role=frontend again, and real connections agree with the policies pair by pair:
web/frontend reaches shop/api, web/other and shop/db do not."""

import json

from overlaynet.tools.labs import Item, LabState


def check(lab: LabState):
    listed = lab.overlaynet("get", "netpol", "-A", "-o", "json")
    policies = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
                for p in (json.loads(listed.stdout)["items"] if listed.returncode == 0 else [])}
    deny = policies.get("shop/default-deny")
    is_deny = bool(deny) and deny["spec"]["podSelector"] == {} and not deny["spec"].get("ingress")
    yield Item(is_deny,
               ("shop has a default-deny ingress policy" if is_deny else "shop has no default-deny policy",
                "shop tiene una política default-deny de entrada" if is_deny else "shop no tiene la política default-deny"),
               ("apply it: overlaynet apply -f default-deny.yaml --name lab14",
                "aplícala: overlaynet apply -f default-deny.yaml --name lab14"))
    allow = "shop/allow-frontend" in policies
    yield Item(allow,
               ("shop has the allow-frontend policy", "shop tiene la política allow-frontend") if allow else
               ("shop has no allow-frontend policy", "shop no tiene la política allow-frontend"),
               ("apply it: overlaynet apply -f allow-frontend.yaml --name lab14",
                "aplícala: overlaynet apply -f allow-frontend.yaml --name lab14"))
    frontend = lab.overlaynet("get", "pod", "frontend", "-n", "web", "-o", "json")
    role = json.loads(frontend.stdout)["metadata"].get("labels", {}).get("role") if frontend.returncode == 0 else None
    yield Item(role == "frontend",
               (f"web/frontend is labelled role={role}", f"web/frontend tiene la etiqueta role={role}"),
               (("the policy selects role=frontend: overlaynet label pod frontend -n web role=frontend --overwrite "
                "--name lab14"),
                ("la política selecciona role=frontend: overlaynet label pod frontend -n web role=frontend "
                "--overwrite --name lab14")))
    table = lab.overlaynet("netpol", "table", "--probe", "-o", "json")
    report = json.loads(table.stdout) if table.stdout.startswith("{") else {"pairs": [], "mismatches": -1}
    pairs = {(p["from"], p["to"]): p for p in report["pairs"]}
    agree = report["mismatches"] == 0 and bool(pairs)
    yield Item(agree,
               (f"real connections agree with the policies on all {len(pairs)} pairs" if agree else
                f"{report['mismatches']} pairs do not behave as the policies say",
                f"las conexiones reales coinciden con las políticas en los {len(pairs)} pares" if agree else
                f"{report['mismatches']} pares no se comportan como dicen las políticas"),
               ("look for the ! cells: overlaynet netpol table --probe --name lab14",
                "busca las celdas con !: overlaynet netpol table --probe --name lab14"))
    wanted = {("web/frontend", "shop/api"): True, ("web/other", "shop/api"): False,
              ("web/frontend", "shop/db"): False}
    for (source, target), expected in wanted.items():
        pair = pairs.get((source, target), {})
        good = pair.get("connected") is expected and pair.get("allowed") is expected
        verb = ("reaches", "llega a") if pair.get("connected") else ("does not reach", "no llega a")
        yield Item(good,
                   (f"{source} {verb[0]} {target} (it should{'' if expected else ' not'})",
                    f"{source} {verb[1]} {target} ({'debe' if expected else 'no debe'})"),
                   ("read who the policies select: overlaynet describe netpol allow-frontend -n shop --name lab14",
                    ("mira a quién seleccionan las políticas: overlaynet describe netpol allow-frontend -n shop "
                    "--name lab14")))

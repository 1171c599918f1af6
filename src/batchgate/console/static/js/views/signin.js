// Sign-in with an API key (a team's or the admin's), kept in this tab's sessionStorage only.

import { auth } from "../api.js";
import { h, replace, errorBox } from "../dom.js";

export const name = "signin";
export const title = "Sign in";

export async function render(main, _params, ctx) {
  const next = new URLSearchParams(location.search).get("next") || "/ui/";
  const input = h("input", { id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "key-help" });
  const status = h("div", { "aria-live": "polite" });
  const form = h("form.card.narrow", {
    onsubmit: async (e) => {
      e.preventDefault();
      auth.key = input.value.trim();
      const session = await ctx.signedIn().catch((err) => { replace(status, errorBox(err)); return null; });
      if (session) ctx.navigate(next.startsWith("/ui") ? next : "/ui/");
      else { auth.key = null; replace(status, errorBox(new Error("That key was not accepted: check it and try again."))); }
    },
  },
  h("h1", {}, "Sign in"),
  h("label", { for: "api-key" }, "API key"), input,
  h("p.help", { id: "key-help" }, "A team key shows that team's files and batches; the admin key shows everything. ",
    "The key stays in this browser tab and is forgotten when the tab closes."),
  h("button", { type: "submit" }, "Sign in"), status);
  replace(main, form);
  input.focus();
}

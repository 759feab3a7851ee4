/* RadVault web pages: small enhancements; every page also works without them. */
"use strict";

function setUpHeatmapToggle() {
  const toggle = document.getElementById("heatmap-toggle");
  const heatmap = document.getElementById("heatmap-image");
  if (!toggle || !heatmap) return;
  const image = document.getElementById("study-image");
  const note = document.getElementById("no-image");
  toggle.setAttribute("role", "button");
  const show = (on) => {
    if (on && !heatmap.getAttribute("src")) heatmap.setAttribute("src", heatmap.dataset.src);
    heatmap.hidden = !on;
    if (image) image.hidden = on;
    if (note) note.hidden = on;
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    toggle.textContent = on ? "Hide heatmap" : "Show heatmap";
    toggle.setAttribute("href", on ? toggle.dataset.offUrl : toggle.dataset.onUrl);
    window.history.replaceState(null, "", on ? toggle.dataset.onUrl : toggle.dataset.offUrl);
  };
  toggle.addEventListener("click", (event) => {
    event.preventDefault();
    show(toggle.getAttribute("aria-pressed") !== "true");
  });
  toggle.addEventListener("keydown", (event) => {
    if (event.key === " ") {
      event.preventDefault();
      show(toggle.getAttribute("aria-pressed") !== "true");
    }
  });
}

function setUpSignOff() {
  const label = document.getElementById("override-label");
  const override = document.getElementById("decision-override");
  if (!label || !override) return;
  const radios = document.querySelectorAll('input[name="decision"]');
  const sync = () => {
    label.required = override.checked;
    label.disabled = !override.checked;
  };
  radios.forEach((radio) => radio.addEventListener("change", sync));
  sync();
}

function setUpPolling() {
  const poll = document.querySelector("[data-poll-ms]");
  if (!poll) return;
  const delay = Math.max(500, Number(poll.dataset.pollMs) || 1000);
  window.setTimeout(() => window.location.reload(), delay);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpHeatmapToggle();
  setUpSignOff();
  setUpPolling();
});

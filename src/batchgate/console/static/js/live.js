// Live updates by polling (ETag-conditional, so an unchanged view costs a 304): one loop per view,
// stopped when the view goes; paused while the tab is hidden.

export function every(ms, tick) {
  let timer = null, stopped = false;
  const run = async () => {
    timer = null;
    if (stopped) return;
    if (!document.hidden) {
      try { await tick(); } catch (err) { console.warn("live update failed", err); }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  timer = setTimeout(run, ms);
  return () => { stopped = true; if (timer) clearTimeout(timer); };
}

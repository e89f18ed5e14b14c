-- Helpers shared by the headless Neovim tests (run.lua: test engine, real.lua: the real default model): checks
-- written to cfg.result_file as JSON ({checks = [{name, ok, detail}], done, messages, stats}), a coroutine that
-- yields to the main loop (so typed keys, autocommands, timers and LSP messages are processed as in an
-- interactive session), and waiting helpers. `H.run(fn)` runs the steps and exits Neovim with status 0 when
-- every check passed.

local cfg = _G.intarsia_test_config
local api = vim.api
local intarsia = require('intarsia')
local ghost = require('intarsia.ghost')

local checks = {}
local messages = {}
local deadline_ms = cfg.timeout_ms or 50000
local started = vim.uv.now()
local finished = false

local orig_notify = vim.notify
vim.notify = function(msg, level, opts)
  messages[#messages + 1] = { msg = tostring(msg), level = level }
  return orig_notify(msg, level, opts)
end

local function write_results(done)
  local f = assert(io.open(cfg.result_file, 'w'))
  f:write(vim.json.encode({ checks = checks, done = done, messages = messages, stats = ghost.stats }))
  f:close()
end

local function finish(err)
  if finished then
    return
  end
  finished = true
  if err then
    checks[#checks + 1] = { name = 'the test script ran to its end', ok = false, detail = tostring(err) }
  end
  local failed = 0
  for _, c in ipairs(checks) do
    if not c.ok then
      failed = failed + 1
    end
  end
  write_results(err == nil)
  vim.cmd('stopinsert')
  vim.cmd(failed == 0 and err == nil and 'qall!' or 'cquit! 1')
end

local function check(name, ok, detail)
  checks[#checks + 1] = { name = name, ok = ok and true or false, detail = (not ok) and vim.inspect(detail) or nil }
  write_results(false)
  return ok
end

local co
local function resume(...)
  if finished then
    return
  end
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    finish(debug.traceback(co, err))
  elseif coroutine.status(co) == 'dead' then
    finish(nil)
  end
end

local function sleep(ms)
  vim.defer_fn(resume, ms)
  coroutine.yield()
end

--- Wait until pred() returns a true value (polling every 20 ms); error after `timeout` ms.
local function wait_for(what, pred, timeout)
  local t0 = vim.uv.now()
  while true do
    local v = pred()
    if v then
      return v
    end
    if vim.uv.now() - t0 > (timeout or 10000) then
      error('timed out waiting for ' .. what, 2)
    end
    sleep(20)
  end
end

--- Call fn(callback) and wait for the callback's arguments.
local function await(fn)
  local got
  fn(function(...)
    got = { ... }
    vim.schedule(resume)
  end)
  while not got do
    coroutine.yield()
  end
  return unpack(got)
end

local function feed(keys)
  api.nvim_feedkeys(vim.keycode(keys), 'mt', false)
end

local function line(n)
  return api.nvim_buf_get_lines(0, n - 1, n, false)[1]
end

local function marks()
  return api.nvim_buf_get_extmarks(0, ghost.ns, 0, -1, { details = true })
end

local function status()
  local err, st = await(intarsia.status)
  assert(not err, vim.inspect(err))
  return st
end

local function suggestion_is(text)
  return function()
    local s = intarsia.suggestion()
    return s and s.text == text
  end
end

local function mode()
  return api.nvim_get_mode().mode
end

vim.defer_fn(function()
  if not finished then
    finish(('the test did not finish within %d ms'):format(deadline_ms))
  end
end, deadline_ms)

local H = {
  cfg = cfg,
  api = api,
  intarsia = intarsia,
  ghost = ghost,
  checks = checks,
  messages = messages,
  check = check,
  sleep = sleep,
  wait_for = wait_for,
  await = await,
  feed = feed,
  line = line,
  marks = marks,
  status = status,
  suggestion_is = suggestion_is,
  mode = mode,
}

--- Run `steps` (a function) in the test coroutine; Neovim exits when it ends or fails.
function H.run(steps)
  co = coroutine.create(steps)
  resume()
end

return H

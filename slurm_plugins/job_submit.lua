--[[
jobenergy: energy budgets at submission (slurm.conf: JobSubmitPlugins=lua).

slurmctld runs slurm_job_submit for every new job while it holds its job locks, so this
script never talks to the network: it reads the state file that `jobenergy budget
write-state` (jobenergy-budget-state.timer) or the collector (budget_state_file) rewrites
every minute, atomically. Format (core/budget_state.py):

  # jobenergy budget state v1
  generated <unix seconds>
  budget <scope> <account|-> <user|-> <warn|deny> <kWh|kgCO2e> <used> <limit> <resets_at|-> <id> <period>
  uid <uid> <user>

A job is over budget when a budget matching its user and/or account has used >= limit:
with `deny` it is refused (slurm.ERROR, the reason shown by sbatch/srun/salloc), with
`warn` it is accepted with a warning. Whatever goes wrong here (no file, unreadable, stale,
garbled, a Lua error), the job is accepted and slurmctld's log says why: a budget must never
stop the scheduler.

The job's user: job_desc.user_name, else the state file's uid line for job_desc.user_id
(or submit_uid); no name, no user budget. Its account: job_desc.account (-A), else
job_desc.default_account (the user's DefaultAccount, from slurmctld's association cache),
else unknown: then only the user's own budgets apply (logged at debug level). Accounts
compare without regard to case, as Slurm's association lookup does; an empty -A is none.

Lua 5.1 (Debian's job_submit_lua.so links liblua5.1), no library beyond the base ones.
--]]

-- Settings: the state file (the --out of jobenergy-budget-state.service), and how old it may
-- be before it is ignored (the timer rewrites it every minute).
local STATE_FILE = "/var/lib/jobenergy/budget.state"
local STALE_AFTER_S = 600

local HEADER = "# jobenergy budget state v1"
local PERIOD_WORD = { day = "daily", week = "weekly", month = "monthly", range = "fixed-range" }

local function log(level, text)
	-- The text goes in as an argument, never as the format: names hold no '%' tricks.
	level("jobenergy budget: %s", text)
end

-- A number as the writer prints it ("512.300000"), else nil.
local function decimal(text)
	if type(text) ~= "string" or not string.find(text, "^%d+%.%d+$") or #text > 40 then
		return nil
	end
	return tonumber(text)
end

-- Return the budgets and uid names of the state file, or nil and why it cannot be used.
local function read_state(now)
	local file, err = io.open(STATE_FILE, "r")
	if not file then
		return nil, "cannot read " .. STATE_FILE .. ": " .. tostring(err)
	end
	local lines = {}
	for line in file:lines() do
		lines[#lines + 1] = line
	end
	file:close()
	if lines[1] ~= HEADER then
		return nil, STATE_FILE .. " is not a v1 budget state (first line)"
	end
	local generated = tonumber(string.match(lines[2] or "", "^generated (%d+)$") or "")
	if not generated then
		return nil, STATE_FILE .. " has no 'generated' line"
	end
	local age = now - generated
	if age > STALE_AFTER_S or age < -STALE_AFTER_S then
		return nil, STATE_FILE .. " is stale (written " .. age .. " s ago, limit "
			.. STALE_AFTER_S .. " s)"
	end
	local budgets, names = {}, {}
	for i = 3, #lines do
		local t = {}
		for token in string.gmatch(lines[i], "%S+") do
			t[#t + 1] = token
		end
		if t[1] == "budget" then
			-- Only the writer's own decimals: tonumber alone would take "0x10", "1e999",
			-- "inf" and "nan" (a NaN is never >= anything: a budget silently off).
			local used, limit = decimal(t[7]), decimal(t[8])
			if #t < 10 or not used or not limit then
				return nil, STATE_FILE .. " line " .. i .. " is garbled"
			end
			budgets[#budgets + 1] = {
				scope = t[2], account = t[3], user = t[4], policy = t[5], unit = t[6],
				used = used, limit = limit, used_text = t[7], limit_text = t[8],
				resets_at = tonumber(t[9]), id = t[10], period = t[11] or "",
			}
		elseif t[1] == "uid" and t[2] and t[3] then
			names[t[2]] = t[3]
		end
	end
	return { budgets = budgets, names = names }
end

-- Slurm matches accounts without regard to case (assoc_mgr's xstrcasecmp): "-A PHYSICS"
-- runs in account physics, so it must meet physics' budgets. ``account`` is lower case.
local function matches(b, user, account)
	if b.scope == "user" then
		return user ~= nil and b.user == user
	elseif b.scope == "account" then
		return account ~= nil and string.lower(b.account) == account
	elseif b.scope == "account_user" then
		return user ~= nil and account ~= nil and b.user == user
			and string.lower(b.account) == account
	end
	return false
end

-- A job's name field: a non-empty string, else nil ("-A ''" is no account: Slurm then uses
-- the default one, and so must the check).
local function name(value)
	if type(value) ~= "string" or value == "" then
		return nil
	end
	return value
end

local function number_text(text)
	-- "512.300000" -> "512.3", "500.000000" -> "500"
	if not string.find(text, ".", 1, true) then
		return text
	end
	return (string.gsub(string.gsub(text, "0+$", ""), "%.$", ""))
end

local function describe(b)
	local who
	if b.scope == "user" then
		who = "user " .. b.user
	elseif b.scope == "account" then
		who = "account " .. b.account
	else
		who = "user " .. b.user .. " in account " .. b.account
	end
	local what = b.unit == "kWh" and "kWh of facility energy" or "kg CO2e"
	local when
	if not b.resets_at then
		when = "it does not reset"
	elseif b.period == "range" then
		when = "it ends " .. os.date("!%Y-%m-%d %H:%M UTC", b.resets_at)
	else
		when = "it resets " .. os.date("!%Y-%m-%d %H:%M UTC", b.resets_at)
	end
	return "energy budget " .. b.id .. " (" .. (PERIOD_WORD[b.period] or b.period) .. ", "
		.. who .. ") has used " .. number_text(b.used_text) .. " of "
		.. number_text(b.limit_text) .. " " .. what .. "; " .. when
end

local function check(job_desc, submit_uid)
	local state, why = read_state(os.time())
	if not state then
		log(slurm.log_error, why .. "; job accepted without a budget check (fail open)")
		return slurm.SUCCESS
	end
	local uid = job_desc.user_id or submit_uid
	local user = name(job_desc.user_name) or state.names[tostring(uid)]
	local account = name(job_desc.account) or name(job_desc.default_account)
	if account then
		account = string.lower(account)
	end
	if account == nil and slurm.log_debug then
		log(slurm.log_debug, "no account known for uid " .. tostring(uid)
			.. ": only user budgets apply")
	end
	local refusal = nil
	for _, b in ipairs(state.budgets) do
		if b.used >= b.limit and matches(b, user, account) then
			if b.policy == "deny" then
				refusal = refusal or b
			else
				slurm.log_user("%s", "jobenergy: warning: " .. describe(b)
					.. ". The job is accepted.")
			end
		end
	end
	if refusal then
		slurm.log_user("%s", "jobenergy: job refused: " .. describe(refusal)
			.. ". Ask your account coordinator or the admins.")
		log(slurm.log_info, "refused a job of uid " .. tostring(uid) .. ": budget "
			.. refusal.id .. " used up")
		return slurm.ERROR
	end
	return slurm.SUCCESS
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local ok, rc = pcall(check, job_desc, submit_uid)
	if ok then
		return rc
	end
	log(slurm.log_error, "check failed, job accepted (fail open): " .. tostring(rc))
	return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	return slurm.SUCCESS
end

return slurm.SUCCESS
